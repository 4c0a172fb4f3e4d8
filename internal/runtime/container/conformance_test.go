package container_test

import (
	"context"
	"os/exec"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
)

func TestConformance(t *testing.T) {
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver { return newDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(func(ctx context.Context, d runtime.Driver, id string, args ...string) (string, error) {
			cd := d.(*container.Driver)
			key, err := cd.Key(id)
			if err != nil {
				return "", err
			}
			out, err := exec.CommandContext(ctx, "runc", append([]string{"--root", cd.RuncRoot(), "exec", key}, args...)...).CombinedOutput()
			return string(out), err
		}),
	)
}
