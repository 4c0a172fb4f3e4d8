package container_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestGVisorHostile runs the hostile-tenant suite on the gVisor class. The
// capsule's pids limit is RLIMIT_NPROC inside the sandbox (adjustSpec):
// the host cgroup's pids.max counts only the sentry's host threads.
func TestGVisorHostile(t *testing.T) {
	testutil.RequireRoot(t)
	suiteTime(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	runtimetest.RunHostile(t,
		func(t *testing.T) runtime.Driver { return gvisorDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithHelper(helperBin),
		runtimetest.WithHostState(hostState),
		runtimetest.WithOOMKillsCapsule(),
	)
}
