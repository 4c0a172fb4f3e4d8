// Package uptest starts a complete in-process Wrenn (package up: control
// plane, SQLite store and host agent with the container driver) for tests
// of the SDK and the CLI. It needs root. Every host object the instance
// creates (capsules, cgroup parent, nftables table, network namespaces)
// belongs to its own instance name and subnet and is removed by Stop.
package uptest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/wrenn-dev/wrenn/internal/up"
)

// BuildEnvd builds the static envd binary into dir and returns its path.
func BuildEnvd(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "envd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/wrenn-dev/wrenn/cmd/envd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("uptest: build envd: %w: %s", err, out)
	}
	return bin, nil
}

// Options configure Start.
type Options struct {
	// Dir holds the home and envd; it must exist and is left to the caller.
	Dir string
	// Instance names the host objects (keep it short and unique).
	Instance string
	// Subnet for capsules, distinct from every other test's.
	Subnet string
	// Log receives warnings (default: discarded).
	Log io.Writer
}

// Instance is a running Wrenn.
type Instance struct {
	App  *up.App
	URL  string
	Key  string
	Home string

	cancel   context.CancelFunc
	done     chan error
	instance string
}

// Start builds envd, starts a Wrenn on a free loopback port with
// capsules destroyed on Stop, and waits until the minimal template is
// ready.
func Start(ctx context.Context, o Options) (*Instance, error) {
	envd, err := BuildEnvd(ctx, o.Dir)
	if err != nil {
		return nil, err
	}
	subnet, err := netip.ParsePrefix(o.Subnet)
	if err != nil {
		return nil, fmt.Errorf("uptest: subnet: %w", err)
	}
	logOut := o.Log
	if logOut == nil {
		logOut = io.Discard
	}
	home := filepath.Join(o.Dir, "home")
	app, err := up.New(ctx, up.Config{
		Home: home, Listen: "127.0.0.1:0", ProxyListen: "127.0.0.1:0", OnExit: up.OnExitDestroy, EnvdPath: envd,
		DefaultDiskSizeMB: 256, Instance: o.Instance, Subnet: subnet,
		WarmPools: nil, // off: tests' instances keep no warm pools (`wrenn up` has them on by default)
		Logger:    slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	in := &Instance{App: app, URL: app.URL(), Key: app.AdminKey(), Home: home, cancel: cancel, done: make(chan error, 1), instance: o.Instance}
	go func() { in.done <- app.Run(runCtx) }()
	select {
	case <-app.Ready():
		return in, nil
	case err := <-in.done:
		cancel()
		return nil, fmt.Errorf("uptest: wrenn stopped before it was ready: %w", err)
	case <-ctx.Done():
		_ = in.Stop()
		return nil, ctx.Err()
	}
}

// Stop destroys every capsule and stops the instance. It fails if the
// instance's nftables table outlives it (a destroy exit must leave the
// host as it found it).
func (in *Instance) Stop() error {
	in.cancel()
	select {
	case err := <-in.done:
		if err != nil {
			return err
		}
	case <-time.After(3 * time.Minute):
		return errors.New("uptest: wrenn did not stop within 3 minutes")
	}
	if out, err := exec.Command("nft", "list", "table", "ip", in.instance).CombinedOutput(); err == nil {
		_ = exec.Command("nft", "delete", "table", "ip", in.instance).Run()
		return fmt.Errorf("uptest: nftables table %s left after a destroy exit:\n%s", in.instance, out)
	}
	return nil
}
