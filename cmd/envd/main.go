// Command envd is Wrenn's in-capsule agent: processes, PTYs, files and
// metrics over Connect RPC and HTTP. It runs as PID 1 inside a capsule and
// as an ordinary process on a host (for tests).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/envd"
)

func main() {
	port := flag.Int("port", envd.DefaultPort, "TCP port to listen on (all interfaces)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	debug := flag.Bool("debug", false, "log at debug level")
	flag.Parse()
	if *showVersion {
		fmt.Printf("envd %s (%s)\n", envd.Version, envd.Commit)
		return
	}
	if *port <= 0 || *port > 65535 {
		fmt.Fprintf(os.Stderr, "envd: --port must be between 1 and 65535, got %d\n", *port)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(log, *port); err != nil {
		log.Error("envd stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, port int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := envd.Protect(); err != nil {
		return fmt.Errorf("envd: make the process non-dumpable: %w", err)
	}
	if os.Getpid() == 1 {
		envd.SetupPID1(log)
		envd.ReserveThreads(envd.ReservedThreads) // survive a capsule at its process limit
	}
	srv, err := envd.New(envd.Config{Logger: log})
	if err != nil {
		return err
	}
	// Plain TCP, not Go's default MPTCP: CRIU cannot checkpoint MPTCP
	// sockets (memory snapshots in the container driver).
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", envd.ListenAddr(port))
	if err != nil {
		return err
	}
	log.Info("envd listening", "addr", ln.Addr().String(), "version", envd.Version)
	return srv.Serve(ctx, ln)
}
