package fcsim

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// Env names the simulator's knobs, read by cmd/fcsim's main and passed in.
const (
	EnvVersion       = "FCSIM_VERSION"          // reported version (default DefaultVersion)
	EnvWriteOnStart  = "FCSIM_WRITE_ON_START"   // seed,stride,offset
	EnvWriteOnResume = "FCSIM_WRITE_ON_RESUME"  // seed,stride,offset
	EnvJailerFail    = "FCSIM_JAILER_FAIL"      // the fake jailer fails with this message
	EnvJailerRecord  = "FCSIM_JAILER_RECORD"    // the fake jailer appends its argv (JSON) to this file
	EnvBrokenVersion = "FCSIM_VERSION_GARBAGE"  // --version prints this instead
	EnvDebug         = "FCSIM_DEBUG"            // log every request to stderr
	EnvNoSocket      = "FCSIM_EXIT_BEFORE_SOCK" // exit with status 1 before listening (a crashing VMM)
)

// firecracker's command-line flags the simulator accepts: those taking a
// value, and switches.
var (
	valueFlags = map[string]bool{
		"--api-sock": true, "--id": true, "--start-time-us": true, "--start-time-cpu-us": true,
		"--parent-cpu-time-us": true, "--level": true, "--log-path": true, "--module": true,
		"--http-api-max-payload-size": true, "--mmds-size-limit": true, "--metrics-path": true,
		"--seccomp-filter": true,
	}
	switchFlags = map[string]bool{
		"--version": true, "--boot-timer": true, "--no-seccomp": true, "--show-level": true,
		"--show-log-origin": true, "--help": true, "--snapshot-version": true,
	}
)

// Main runs the simulator as a process: as the fake jailer when the
// program's name contains "jailer", else as firecracker. environ (KEY=VALUE)
// holds its knobs. It returns the exit status.
func Main(args, environ []string, stdout, stderr io.Writer) int {
	env := func(k string) string {
		for _, kv := range environ {
			if v, ok := strings.CutPrefix(kv, k+"="); ok {
				return v
			}
		}
		return ""
	}
	if strings.Contains(filepath.Base(args[0]), "jailer") {
		return jailerMain(args, environ, env, stderr)
	}
	version := env(EnvVersion)
	if version == "" {
		version = DefaultVersion
	}
	flags := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if k, v, ok := strings.Cut(a, "="); ok && valueFlags[k] {
			flags[k] = v
			continue
		}
		switch {
		case switchFlags[a]:
			flags[a] = "true"
		case valueFlags[a]:
			if i+1 >= len(args) {
				fmt.Fprintf(stderr, "error: the argument '%s' requires a value but none was supplied\n", a)
				return 1
			}
			flags[a] = args[i+1]
			i++
		default:
			fmt.Fprintf(stderr, "Arguments parsing error: Found argument '%s' which wasn't expected, or isn't valid in this context.\n", a)
			return 1
		}
	}
	if flags["--version"] != "" {
		if g := env(EnvBrokenVersion); g != "" {
			fmt.Fprintln(stdout, g)
			return 0
		}
		fmt.Fprintf(stdout, "Firecracker v%s\n\n", version)
		return 0
	}
	if flags["--snapshot-version"] != "" {
		fmt.Fprintf(stdout, "v%s.0\n", dataVersion(version))
		return 0
	}
	if env(EnvNoSocket) != "" {
		fmt.Fprintln(stderr, "fcsim: exiting before the API socket, as asked")
		return 1
	}
	sock := flags["--api-sock"]
	if sock == "" {
		sock = "/run/firecracker.socket"
	}
	opts := Options{ID: flags["--id"], Version: version}
	var err error
	if opts.WriteOnStart, err = ParseWrites(env(EnvWriteOnStart)); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if opts.WriteOnResume, err = ParseWrites(env(EnvWriteOnResume)); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	level := slog.LevelWarn
	if env(EnvDebug) != "" {
		level = slog.LevelDebug
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	exit := make(chan int, 1)
	opts.Exit = func(code int) { exit <- code }
	s, err := Listen(sock, opts)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { _ = s.Serve() }()
	fmt.Fprintf(stdout, "fcsim: Firecracker v%s API simulator serving on %s (no guest runs)\n", version, sock)
	code := 0
	select {
	case <-sig:
	case code = <-exit:
	}
	_ = s.Close()
	_ = os.Remove(sock)
	return code
}
