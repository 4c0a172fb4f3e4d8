package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// templateBuildCmd returns `wrenn template build -f Wrennfile [--context
// DIR] NAME`: upload the recipe and its context, stream the build's log,
// exit non-zero when it fails.
func templateBuildCmd(f *clientFlags) *cobra.Command {
	var (
		file, contextDir, registryUser string
		passwordStdin, quiet           bool
		timeout                        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "build -f Wrennfile [--context DIR] NAME",
		Short: "Build a template from a Wrennfile, streaming its log",
		Long: `Build the team's template NAME from a Wrennfile (docs/TEMPLATES.md): FROM a
template or an OCI image, then RUN, COPY (from --context), ENV, WORKDIR,
USER, START and READY. The context directory is streamed as a tar; the
build's log (every step's output, step boundaries and durations) is
printed as it runs, and the command exits non-zero if the build fails.
A private FROM image takes --registry-user with the password on stdin
(--registry-password-stdin); it is used for this build only.`,
		Example: `  wrenn template build -f Wrennfile --context . my-app
  echo "$TOKEN" | wrenn template build -f Wrennfile --registry-user bot --registry-password-stdin app`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("give the recipe with -f FILE (a Wrennfile)")
			}
			recipe, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			req := wrenn.BuildTemplateRequest{Name: args[0], Recipe: string(recipe), TimeoutSec: int(timeout / time.Second)}
			if contextDir != "" {
				st, err := os.Stat(contextDir)
				if err != nil {
					return err
				}
				if !st.IsDir() {
					return fmt.Errorf("--context %s is not a directory", contextDir)
				}
				rc := wrenn.TarDir(contextDir)
				defer rc.Close()
				req.Context = rc
			}
			if registryUser != "" || passwordStdin {
				if !passwordStdin || registryUser == "" {
					return errors.New("a registry credential needs both --registry-user and --registry-password-stdin")
				}
				pw, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				req.RegistryAuth = &wrenn.RegistryAuth{Username: registryUser, Password: strings.TrimRight(pw, "\r\n")}
			}
			return runBuild(cmd, f, req, quiet)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the recipe (a Wrennfile)")
	cmd.Flags().StringVar(&contextDir, "context", "", "directory COPY reads from (streamed as a tar)")
	cmd.Flags().StringVar(&registryUser, "registry-user", "", "user name for a private FROM image")
	cmd.Flags().BoolVar(&passwordStdin, "registry-password-stdin", false, "read the registry password from stdin")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "bound for the whole build (default the server's, 30m)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the outcome, not the log")
	return cmd
}

var teamTemplateName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// importViaAPI uploads an image or rootfs tarball (or a directory, as a
// tar) as a build of kind import.
func importViaAPI(cmd *cobra.Command, f *clientFlags, name, src string) error {
	if !teamTemplateName.MatchString(name) {
		return fmt.Errorf("%q is not a valid template name (lower-case letters, digits, . _ -; at most 64)", name)
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	var rc io.ReadCloser
	if st.IsDir() {
		rc = wrenn.TarDir(src)
	} else if rc, err = os.Open(src); err != nil {
		return err
	}
	defer rc.Close()
	return runBuild(cmd, f, wrenn.BuildTemplateRequest{Name: name, Image: rc}, false)
}

// runBuild starts a build, streams its log to stdout/stderr and reports
// its outcome; a failed or cancelled build is an error (exit 1).
func runBuild(cmd *cobra.Command, f *clientFlags, req wrenn.BuildTemplateRequest, quiet bool) error {
	cfg, err := f.resolve()
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	start := time.Now()
	b, err := c.BuildTemplate(ctx, req)
	if err != nil {
		return friendly(err, cfg.URL)
	}
	fmt.Fprintf(errOut, "Build %s of template %s started\n", b.ID, req.Name)
	err = c.BuildLogs(ctx, b.ID, true, func(r wrenn.BuildLogRecord) error {
		if quiet {
			return nil
		}
		switch r.Stream {
		case "stderr":
			_, err := io.WriteString(errOut, r.Data)
			return err
		case "system":
			_, err := fmt.Fprintf(out, "==> %s", r.Data)
			return err
		}
		_, err := io.WriteString(out, r.Data)
		return err
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(errOut, "Stopped following; the build %s goes on (cancel: POST /v1/templates/builds/%s/cancel)\n", b.ID, b.ID)
		}
		return friendly(err, cfg.URL)
	}
	final, err := c.Build(ctx, b.ID)
	if err != nil {
		return friendly(err, cfg.URL)
	}
	switch final.Status {
	case "succeeded":
		fmt.Fprintf(out, "Built template %s (%s) in %s\n", req.Name, final.TemplateID, time.Since(start).Round(time.Millisecond))
		return nil
	case "cancelled":
		return fmt.Errorf("build %s was cancelled", b.ID)
	}
	return fmt.Errorf("build %s %s: %s", b.ID, final.Status, final.Error)
}
