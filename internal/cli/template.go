package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/up"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// newTemplateCmd returns `wrenn template`.
func newTemplateCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "List, build and import capsule templates",
	}
	addClientFlags(cmd, &f)
	cmd.AddCommand(templateLsCmd(&f), templateImportCmd(&f), templateBuildCmd(&f), templatePrepareCmd(), templateSetIsolationCmd(&f))
	return cmd
}

func templateLsCmd(f *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the templates capsules can be created from",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.resolve()
			if err != nil {
				return err
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			ts, err := c.Templates(cmd.Context())
			if err != nil {
				return friendly(err, cfg.URL)
			}
			if asJSON {
				if ts == nil {
					ts = []wrenn.Template{}
				}
				return writeJSON(cmd.OutOrStdout(), ts)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tPUBLIC\tSIZE\tCREATED")
			now := time.Now()
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", t.Name, t.ID, t.Public, humanBytes(t.SizeBytes), ago(t.CreatedAt, now))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func templateImportCmd(f *clientFlags) *cobra.Command {
	var home string
	var local bool
	cmd := &cobra.Command{
		Use:   "import NAME FILE",
		Short: "Import an image (docker save, OCI layout) or a root filesystem as a template",
		Long: `Upload FILE and make it the team's template NAME: a ` + "`docker save`" + ` or
OCI-layout tarball (its layers applied, its Env/WorkingDir/User and
Entrypoint/Cmd kept), or a plain root filesystem tarball or directory. The
import runs as a build: its log is streamed here.

With --local (as root, on the machine where ` + "`wrenn up`" + ` runs) FILE is a root
filesystem written into $WRENN_HOME (--home) directly as a public template.`,
		Example: `  docker save python:3.12-slim > py.tar
  wrenn template import python py.tar
  sudo wrenn template import --local python rootfs.tar`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, src := args[0], args[1]
			if !local && !cmd.Flags().Changed("home") { // --home alone keeps meaning the local import
				return importViaAPI(cmd, f, name, src)
			}
			if !template.ValidName(name) {
				return fmt.Errorf("%q is not a valid template name (letters, digits, . _ -; at most 64)", name)
			}
			if os.Geteuid() != 0 {
				return errors.New("`wrenn template import` must run as root (it keeps file owners) on the Wrenn host")
			}
			home = resolveHome(home)
			db := filepath.Join(home, "wrenn.db")
			if _, err := os.Stat(db); err != nil {
				return fmt.Errorf("no Wrenn home at %s (%w): start `wrenn up` once, or pass --home", home, err)
			}
			st, err := os.Stat(src)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ts := template.Store{Dir: filepath.Join(home, "templates")}
			start := time.Now()
			var t template.Template
			if st.IsDir() {
				t, err = ts.ImportDir(ctx, name, src)
			} else {
				t, err = ts.ImportTarball(ctx, name, src)
			}
			if err != nil {
				return err
			}
			s, err := controlplane.OpenStore(ctx, db)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := up.RegisterTemplate(ctx, s, t); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Imported template %s (%s) in %s\n", name, humanBytes(t.SizeBytes), time.Since(start).Round(time.Millisecond))
			return err
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "import a root filesystem into the Wrenn home directly (as root) as a public template")
	cmd.Flags().StringVar(&home, "home", "", "local import: Wrenn home directory (default $WRENN_HOME, else /var/lib/wrenn); implies --local")
	return cmd
}

func templatePrepareCmd() *cobra.Command {
	var home, cacheDir, mirror, busybox string
	cmd := &cobra.Command{
		Use:   "prepare minimal|base",
		Short: "Prepare a shipped template locally (minimal: busybox; base: Debian bookworm via debootstrap)",
		Long: `Build one of the templates Wrenn ships into $WRENN_HOME (--home), as root:
"minimal" is a static busybox (seconds), "base" is Debian bookworm minbase
with bash, coreutils, curl, git, python3 and more, built with debootstrap and
cached machine-wide in --cache-dir keyed by the recipe's hash (minutes the
first time, seconds after). If a Wrenn already uses that home, the template
is registered at once; otherwise ` + "`wrenn up`" + ` registers it when it starts.`,
		Example: "  sudo wrenn template prepare minimal\n  sudo wrenn template prepare base",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if name != up.MinimalTemplate && name != up.BaseTemplate {
				return fmt.Errorf("unknown template %q: wrenn builds %q and %q (use `wrenn template build` or `wrenn template import` for your own)", name, up.MinimalTemplate, up.BaseTemplate)
			}
			if os.Geteuid() != 0 {
				return errors.New("`wrenn template prepare` must run as root (it keeps file owners)")
			}
			home = resolveHome(home)
			ctx := cmd.Context()
			ts := template.Store{Dir: filepath.Join(home, "templates")}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Building template %s into %s…\n", name, ts.Dir)
			start := time.Now()
			done := make(chan struct{})
			go func() { // progress for the long debootstrap build
				t := time.NewTicker(10 * time.Second)
				defer t.Stop()
				for {
					select {
					case <-done:
						return
					case <-t.C:
						fmt.Fprintf(out, "  still building %s (%s)\n", name, time.Since(start).Round(time.Second))
					}
				}
			}()
			var t template.Template
			var err error
			if name == up.MinimalTemplate {
				t, err = ts.BuildBusybox(ctx, name, busybox)
			} else {
				t, err = ts.BuildDebian(ctx, name, template.DefaultDebianRecipe(mirror), cacheDir)
			}
			close(done)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Built template %s (%s) in %s\n", name, humanBytes(t.SizeBytes), time.Since(start).Round(time.Millisecond))
			db := filepath.Join(home, "wrenn.db")
			if _, err := os.Stat(db); err != nil {
				return nil // no Wrenn in this home yet: wrenn up registers it
			}
			s, err := controlplane.OpenStore(ctx, db)
			if err != nil {
				return err
			}
			defer s.Close()
			return up.RegisterTemplate(ctx, s, t)
		},
	}
	cmd.Flags().StringVar(&home, "home", "", "Wrenn home directory (default $WRENN_HOME, else /var/lib/wrenn)")
	cmd.Flags().StringVar(&cacheDir, "cache-dir", "/var/cache/wrenn", "machine-wide cache of base template builds")
	cmd.Flags().StringVar(&mirror, "debian-mirror", "http://deb.debian.org/debian", "Debian mirror for the base template")
	cmd.Flags().StringVar(&busybox, "busybox", template.BusyboxPath, "static busybox binary for the minimal template")
	return cmd
}

// resolveHome applies the WRENN_HOME default.
func resolveHome(flag string) string {
	if flag != "" {
		return flag
	}
	if h := os.Getenv("WRENN_HOME"); h != "" {
		return h
	}
	return "/var/lib/wrenn"
}
