package vm_test

import (
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
)

// TestConformance runs the runtime conformance suite against the microVM
// driver (QEMU; TCG on hosts without KVM, about 3-10 s a boot). The suite
// boots about a dozen VMs, four of them at once.
func TestConformance(t *testing.T) {
	t0 := time.Now()
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver { return newDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(runtimetest.EnvdExecFunc),
	)
	t.Logf("microVM conformance took %v", time.Since(t0).Round(time.Second))
}
