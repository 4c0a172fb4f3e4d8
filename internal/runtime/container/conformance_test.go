package container_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
)

func TestConformance(t *testing.T) {
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver { return newDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(runtimetest.EnvdExecFunc),
	)
}
