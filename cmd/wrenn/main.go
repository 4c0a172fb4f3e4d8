// Command wrenn is Wrenn's single binary: control plane (`wrenn server`),
// host agent (`wrenn agent`), both at once (`wrenn up`), operator tools and
// the client commands. The command tree lives in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal starts a graceful stop, restore the default
	// handlers so that a second Ctrl-C ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
