package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// capsuleCmd holds what every `wrenn capsule` subcommand shares.
type capsuleCmd struct {
	flags clientFlags
	c     *wrenn.Client
	url   string
}

// connect resolves the connection once per invocation.
func (cc *capsuleCmd) connect() error {
	cfg, err := cc.flags.resolve()
	if err != nil {
		return err
	}
	cc.url = cfg.URL
	cc.c, err = cc.flags.client()
	return err
}

func (cc *capsuleCmd) wrap(err error) error { return friendly(err, cc.url) }

// newCapsuleCmd returns `wrenn capsule` and its subcommands.
func newCapsuleCmd() *cobra.Command {
	cc := &capsuleCmd{}
	cmd := &cobra.Command{
		Use:     "capsule",
		Aliases: []string{"capsules", "cl"},
		Short:   "Create, use and remove capsules",
		Long: `Create capsules (disposable Linux sandboxes), run commands and terminals in
them, copy files in and out, pause, resume and remove them. The commands
talk to the Wrenn saved by ` + "`wrenn login`" + ` (or --url/--api-key,
$WRENN_URL/$WRENN_API_KEY).`,
		PersistentPreRunE: func(*cobra.Command, []string) error { return cc.connect() },
	}
	addClientFlags(cmd, &cc.flags)
	cmd.AddCommand(cc.createCmd(), cc.lsCmd(), cc.getCmd(), cc.execCmd(), cc.shellCmd(), cc.cpCmd(),
		cc.pauseCmd(), cc.resumeCmd(), cc.rmCmd(), cc.logsCmd(), cc.networkCmd(), cc.snapshotCmd(), cc.forkCmd())
	return cmd
}

func (cc *capsuleCmd) createCmd() *cobra.Command {
	var (
		p          wrenn.CreateParams
		env        []string
		quiet      bool
		asJSON     bool
		timeout    time.Duration
		nf         networkFlags
		autoResume bool
		volumes    []string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a capsule and wait until it runs",
		Example: `  wrenn capsule create --template minimal
  id=$(wrenn capsule create -q --memory 1024 --timeout 1h)
  wrenn capsule create --allow-only --allow-out pypi.org,'*.pythonhosted.org' --egress-mbps 10
  wrenn capsule create --isolation gvisor
  wrenn capsule create --volume data:/data --volume models:/models:ro`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if p.Env, err = parseEnv(env); err != nil {
				return err
			}
			if p.VolumeMounts, err = parseVolumeMounts(volumes); err != nil {
				return err
			}
			p.Timeout = timeout
			p.Network = nf.policy()
			if cmd.Flags().Changed("auto-resume") {
				p.AutoResume = &autoResume
			}
			start := time.Now()
			c, err := cc.c.Create(cmd.Context(), p)
			if err != nil {
				return cc.wrap(err)
			}
			out := cmd.OutOrStdout()
			switch {
			case asJSON:
				return writeJSON(out, c)
			case quiet:
				_, err = fmt.Fprintln(out, c.ID)
				return err
			}
			_, err = fmt.Fprintf(out, "Created capsule %s (%s) in %s\n", c.ID, c.Status, time.Since(start).Round(time.Millisecond))
			return err
		},
	}
	fl := cmd.Flags()
	d := limits.Defaults
	fl.StringVarP(&p.Template, "template", "t", "", fmt.Sprintf("template name or id (default %q)", d.Template))
	fl.Int64Var(&p.VCPUs, "vcpus", 0, fmt.Sprintf("virtual CPUs (default %d, at most %d)", d.VCPUs, d.MaxVCPUs))
	fl.Int64Var(&p.MemoryMB, "memory", 0, fmt.Sprintf("memory in MB (default %d, at least %d)", d.MemoryMB, d.MinMemoryMB))
	fl.Int64Var(&p.DiskSizeMB, "disk", 0, fmt.Sprintf("writable disk in MB (default %d, at least %d)", d.DiskSizeMB, d.MinDiskSizeMB))
	fl.DurationVar(&timeout, "timeout", 0, fmt.Sprintf("time to live, refreshable (default %s)", strings.TrimSuffix((time.Duration(d.TimeoutSec)*time.Second).String(), "0s")))
	fl.BoolVar(&p.NoInternet, "no-internet", false, "no outbound internet access (default: public addresses are reachable; the host, other capsules and private ranges never are)")
	fl.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.BoolVar(&p.Public, "public", false, "let anyone reach the capsule's ports through the proxy")
	fl.StringVar(&p.Isolation, "isolation", "", isolationHelp+" (default: the template's, else the team's, else the platform's)")
	fl.StringVar(&p.OnTimeout, "on-timeout", "", "what the end of the timeout does: kill, or pause (to disk, processes kept where the host can) (default: the template's, else the team's, else kill)")
	fl.BoolVar(&autoResume, "auto-resume", false, "resume the paused capsule on any use: exec, files, terminals, its ports (default: the template's, else the team's, else off)")
	fl.StringArrayVar(&volumes, "volume", nil, "mount a volume NAME:/path or NAME:/path:ro (repeatable; container isolation only)")
	fl.BoolVarP(&quiet, "quiet", "q", false, "print only the capsule id")
	fl.BoolVar(&asJSON, "json", false, "print the capsule as JSON")
	nf.add(fl)
	return cmd
}

// templateNames maps template ids to names (best effort).
func (cc *capsuleCmd) templateNames(ctx context.Context) map[string]string {
	m := map[string]string{}
	ts, err := cc.c.Templates(ctx)
	if err != nil {
		return m
	}
	for _, t := range ts {
		m[t.ID] = t.Name
	}
	return m
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		return "in " + (-d).Round(time.Second).String()
	}
	return d.Round(time.Second).String() + " ago"
}

func (cc *capsuleCmd) lsCmd() *cobra.Command {
	var (
		status string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List capsules",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			caps, err := cc.c.List(cmd.Context(), status)
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				if caps == nil {
					caps = []wrenn.Capsule{}
				}
				return writeJSON(cmd.OutOrStdout(), caps)
			}
			names := cc.templateNames(cmd.Context())
			now := time.Now()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tTEMPLATE\tVCPUS\tMEMORY\tCREATED\tEXPIRES")
			for _, c := range caps {
				exp := "-"
				if c.ExpiresAt != nil && c.Status == wrenn.StatusRunning {
					exp = ago(*c.ExpiresAt, now)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MB\t%s\t%s\n", c.ID, c.Status, orID(names, c.TemplateID), c.VCPUs, c.MemoryMB, ago(c.CreatedAt, now), exp)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only capsules in this state (running, paused, …)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func orID(names map[string]string, id string) string {
	if n := names[id]; n != "" {
		return n
	}
	return id
}

func (cc *capsuleCmd) getCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "get CAPSULE",
		Short: "Show one capsule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cc.c.Get(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), c)
			}
			names := cc.templateNames(cmd.Context())
			now := time.Now()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "ID\t%s\n", c.ID)
			fmt.Fprintf(tw, "Status\t%s\n", c.Status)
			if c.ErrorReason != "" {
				fmt.Fprintf(tw, "Error\t%s\n", c.ErrorReason)
			}
			fmt.Fprintf(tw, "Template\t%s\n", orID(names, c.TemplateID))
			if c.Isolation != "" {
				fmt.Fprintf(tw, "Isolation\t%s\n", c.Isolation)
			}
			fmt.Fprintf(tw, "vCPUs\t%d\n", c.VCPUs)
			fmt.Fprintf(tw, "Memory\t%d MB\n", c.MemoryMB)
			fmt.Fprintf(tw, "Disk\t%d MB\n", c.DiskSizeMB)
			fmt.Fprintf(tw, "Timeout\t%s\n", time.Duration(c.TimeoutSec)*time.Second)
			fmt.Fprintf(tw, "Internet\t%s\n", map[bool]string{true: "on", false: "off"}[c.AllowInternet])
			fmt.Fprint(tw, networkLines(c.Network))
			if c.ExpiresAt != nil {
				fmt.Fprintf(tw, "Expires\t%s (%s)\n", c.ExpiresAt.Local().Format(time.RFC3339), ago(*c.ExpiresAt, now))
			}
			fmt.Fprintf(tw, "Created\t%s (%s)\n", c.CreatedAt.Local().Format(time.RFC3339), ago(c.CreatedAt, now))
			if c.PausedAt != nil {
				fmt.Fprintf(tw, "Paused\t%s\n", c.PausedAt.Local().Format(time.RFC3339))
			}
			fmt.Fprintf(tw, "Public\t%t\n", c.Public)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (cc *capsuleCmd) execCmd() *cobra.Command {
	var (
		r          wrenn.ExecRequest
		env        []string
		background bool
		tag        string
		asJSON     bool
		withStdin  bool
	)
	cmd := &cobra.Command{
		Use:   "exec CAPSULE -- COMMAND [ARG...]",
		Short: "Run a command in a capsule, streaming its output",
		Long: `Run a command in a capsule. Its stdout and stderr are streamed as they are
produced, and wrenn exits with the command's exit code. With --background
the command keeps running after wrenn returns; follow it with
` + "`wrenn capsule logs`" + `. With --stdin, standard input (up to 512 KiB) is
given to the command, and its output is printed when it ends.`,
		Example: `  wrenn capsule exec cl-abc -- echo hello
  echo 'print(1+1)' | wrenn capsule exec cl-abc --stdin -- python3
  wrenn capsule exec cl-abc --cwd /tmp -e DEBUG=1 -- sh -c 'ls -l | wc -l'
  wrenn capsule exec cl-abc --background --tag server -- python3 -m http.server 8000`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if r.Env, err = parseEnv(env); err != nil {
				return err
			}
			r.Cmd, r.Args = args[1], args[2:]
			ctx := cmd.Context()
			if background {
				pid, err := cc.c.StartProcess(ctx, args[0], wrenn.ProcessRequest{ExecRequest: r, Tag: tag})
				if err != nil {
					return cc.wrap(err)
				}
				if asJSON {
					return writeJSON(cmd.OutOrStdout(), map[string]any{"pid": pid, "tag": tag})
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Started process %d in %s (follow it with: wrenn capsule logs %s %d)\n", pid, args[0], args[0], pid)
				return err
			}
			if withStdin {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxExecStdin+1))
				if err != nil {
					return fmt.Errorf("read standard input: %w", err)
				}
				if len(b) > maxExecStdin {
					return fmt.Errorf("--stdin takes at most %d KiB; copy larger input with `wrenn capsule cp - %s:/tmp/input`", maxExecStdin>>10, args[0])
				}
				r.Stdin = string(b)
			}
			if asJSON || withStdin {
				res, err := cc.c.Exec(ctx, args[0], r)
				if err != nil {
					return cc.wrap(err)
				}
				if asJSON {
					if err := writeJSON(cmd.OutOrStdout(), res); err != nil {
						return err
					}
				} else {
					_, _ = io.WriteString(cmd.OutOrStdout(), res.Stdout)
					_, _ = io.WriteString(cmd.ErrOrStderr(), res.Stderr)
				}
				return exitStatus(res.ExitCode, res.Error)
			}
			st, err := cc.c.ExecStream(ctx, args[0], r, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return cc.wrap(err)
			}
			return exitStatus(st.ExitCode, st.Message)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVar(&r.Cwd, "cwd", "", "working directory")
	fl.StringVarP(&r.User, "user", "u", "", "user to run as")
	fl.DurationVar(&r.Timeout, "timeout", 0, "kill the command after this long (0: no limit beyond the server's)")
	fl.BoolVarP(&background, "background", "d", false, "start the command in the background and print its pid")
	fl.StringVar(&tag, "tag", "", "name of a background process")
	fl.BoolVar(&asJSON, "json", false, "wait for the command and print {exit_code, stdout, stderr} as JSON")
	fl.BoolVarP(&withStdin, "stdin", "i", false, "give standard input to the command (buffered, at most 512 KiB)")
	return cmd
}

// maxExecStdin bounds --stdin (the API's JSON body limit is 1 MiB).
const maxExecStdin = 512 << 10

// exitStatus turns a remote exit code into the CLI's exit.
func exitStatus(code int, msg string) error {
	if code == 0 && msg == "" {
		return nil
	}
	if code == 0 {
		code = 1
	}
	text := fmt.Sprintf("command exited with code %d", code)
	if msg != "" {
		text += ": " + msg
	}
	return &exitError{code: code, msg: text}
}

func (cc *capsuleCmd) shellCmd() *cobra.Command {
	var shellCmd string
	cmd := &cobra.Command{
		Use:   "shell CAPSULE",
		Short: "Open an interactive terminal in a capsule",
		Long: `Open an interactive terminal in a capsule: a real PTY, in raw mode, resized
with your window. The session ends when the shell exits; the terminal is
restored and wrenn exits with the shell's exit code.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cc.runShell(cmd.Context(), args[0], shellCmd, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&shellCmd, "cmd", "", "program to run instead of the login shell")
	return cmd
}

func (cc *capsuleCmd) runShell(ctx context.Context, id, prog string, stdin io.Reader, stdout, stderr io.Writer) error {
	in, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) { //nolint:gosec // fds fit in int
		return errors.New("`wrenn capsule shell` needs a terminal on standard input; use `wrenn capsule exec` in scripts")
	}
	fd := int(in.Fd()) //nolint:gosec // fds fit in int
	cols, rows, err := term.GetSize(fd)
	if err != nil {
		cols, rows = 80, 24
	}
	pty, err := cc.c.OpenPTY(ctx, id, wrenn.PTYOptions{Cols: uint16(cols), Rows: uint16(rows), Cmd: prog}) //nolint:gosec // terminal sizes fit
	if err != nil {
		return cc.wrap(err)
	}
	defer pty.Close()
	old, err := term.MakeRaw(fd)
	if err != nil {
		return fmt.Errorf("raw mode: %w", err)
	}
	restored := false
	restore := func() {
		if !restored {
			_ = term.Restore(fd, old)
			restored = true
		}
	}
	defer restore()

	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for range winch {
			if c, r, err := term.GetSize(fd); err == nil {
				_ = pty.Resize(uint16(c), uint16(r)) //nolint:gosec // terminal sizes fit
			}
		}
	}()
	go func() {
		_, _ = io.Copy(pty, in)
	}()
	_, err = io.Copy(stdout, pty)
	restore()
	switch {
	case err == nil:
		fmt.Fprint(stderr, "\r\n[session disconnected]\r\n")
		if st := pty.ExitStatus(); st != nil && st.ExitCode != 0 {
			return &exitError{code: st.ExitCode, msg: fmt.Sprintf("shell exited with code %d", st.ExitCode)}
		}
		return nil
	case errors.Is(err, context.Canceled):
		return nil
	}
	return cc.wrap(err)
}

func (cc *capsuleCmd) pauseCmd() *cobra.Command {
	var toDisk, asJSON bool
	cmd := &cobra.Command{
		Use:   "pause CAPSULE...",
		Short: "Pause capsules (frozen in memory, or --to-disk)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cc.each(cmd, args, asJSON, func(ctx context.Context, id string) (*wrenn.Capsule, error) {
				return cc.c.Pause(ctx, id, wrenn.PauseOptions{ToDisk: toDisk})
			})
		},
	}
	cmd.Flags().BoolVar(&toDisk, "to-disk", false, "write the capsule to the snapshot store and free its memory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the capsules as JSON")
	return cmd
}

func (cc *capsuleCmd) resumeCmd() *cobra.Command {
	var (
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "resume CAPSULE...",
		Short: "Resume paused capsules",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cc.each(cmd, args, asJSON, func(ctx context.Context, id string) (*wrenn.Capsule, error) {
				return cc.c.Resume(ctx, id, timeout)
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "new time to live (default: the capsule's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the capsules as JSON")
	return cmd
}

// each applies op to every id, reporting each result; it fails if any did.
func (cc *capsuleCmd) each(cmd *cobra.Command, ids []string, asJSON bool, op func(context.Context, string) (*wrenn.Capsule, error)) error {
	var failed []string
	var out []*wrenn.Capsule
	for _, id := range ids {
		c, err := op(cmd.Context(), id)
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", id, cc.wrap(err))
			failed = append(failed, id)
			continue
		}
		if asJSON {
			out = append(out, c)
			continue
		}
		switch {
		case c.MemoryKept != nil && !*c.MemoryKept && c.Status == "running":
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (booted again: files kept, processes and memory were not)\n", c.ID, c.Status)
		case c.MemoryKept != nil && !*c.MemoryKept:
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (files kept; processes and memory are not: it boots again on resume)\n", c.ID, c.Status)
		default:
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", c.ID, c.Status)
		}
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed for %s", strings.Join(failed, ", "))
	}
	return nil
}

func (cc *capsuleCmd) rmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm CAPSULE...",
		Aliases: []string{"kill", "delete"},
		Short:   "Destroy capsules",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var failed []string
			for _, id := range args {
				if err := cc.c.Delete(cmd.Context(), id); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", id, cc.wrap(err))
					failed = append(failed, id)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s removed\n", id)
			}
			if len(failed) > 0 {
				return fmt.Errorf("failed for %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	return cmd
}

func (cc *capsuleCmd) logsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logs CAPSULE [PID|TAG]",
		Short: "Follow the output of a background process",
		Long: `Follow the output of a background process (started with
` + "`wrenn capsule exec --background`" + `) until it exits; wrenn then exits with
its exit code. Without PID or TAG, list the capsule's processes.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			procs, err := cc.c.Processes(ctx, args[0])
			if err != nil {
				return cc.wrap(err)
			}
			if len(args) == 1 {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PID\tTAG\tCOMMAND")
				for _, p := range procs {
					fmt.Fprintf(tw, "%d\t%s\t%s\n", p.PID, p.Tag, strings.Join(append([]string{p.Cmd}, p.Args...), " "))
				}
				return tw.Flush()
			}
			var pid uint32
			for _, p := range procs {
				if p.Tag != "" && p.Tag == args[1] {
					pid = p.PID
				}
			}
			if pid == 0 {
				n, err := strconv.ParseUint(args[1], 10, 32)
				if err != nil {
					return fmt.Errorf("no process tagged %q in %s", args[1], args[0])
				}
				pid = uint32(n)
			}
			st, err := cc.c.AttachProcess(ctx, args[0], pid, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return cc.wrap(err)
			}
			return exitStatus(st.ExitCode, st.Message)
		},
	}
	return cmd
}

// humanBytes formats a size for people.
func humanBytes(n int64) string {
	if n < 0 {
		return "-"
	}
	return humanize.IBytes(uint64(n))
}

// parseEnv turns KEY=VALUE strings into a map; values may hold "=" and ",".
func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: want KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}
