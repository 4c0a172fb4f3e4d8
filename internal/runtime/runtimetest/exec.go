package runtimetest

import (
	"context"
	"fmt"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// EnvdExec runs args in the capsule through envd's process service (the
// path every user command takes, so the process has exactly the
// namespaces, user namespace, cgroup, capabilities and seccomp profile of
// the capsule's user code) as user ("root" if empty). It returns stdout
// followed by stderr, and an error if the command did not exit 0.
func EnvdExec(ctx context.Context, info runtime.Info, user string, args ...string) (string, error) {
	if user == "" {
		user = "root"
	}
	c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		return "", err
	}
	defer c.CloseIdleConnections()
	res, err := c.Exec(envdclient.WithUser(ctx, user), &pb.ProcessConfig{Cmd: args[0], Args: args[1:]}, envdclient.ExecOptions{})
	out := string(res.Stdout) + string(res.Stderr)
	if err != nil {
		return out, err
	}
	if res.ExitCode != 0 || res.Error != "" {
		return out, fmt.Errorf("%s: exit code %d %s", args[0], res.ExitCode, res.Error)
	}
	return out, nil
}

// EnvdExecFunc is an ExecFunc that runs commands as root through envd.
func EnvdExecFunc(ctx context.Context, d runtime.Driver, id string, args ...string) (string, error) {
	info, err := d.Inspect(ctx, id)
	if err != nil {
		return "", err
	}
	return EnvdExec(ctx, info, "root", args...)
}
