//go:build gvisor

package container_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// gvisorSeq picks each gVisor test driver's subnet.
var gvisorSeq atomic.Int32

// gvisorConfig returns a driver config of the gVisor runtime class. The
// runsc binary comes from WRENN_TEST_RUNSC (the path scripts/runsc.sh
// prints; `make test` sets it and fails if runsc cannot be built). Without
// it the test fails: the gVisor class is part of the product. gVisor tests
// use their own subnets, 10.150-159.
func gvisorConfig(t testing.TB) container.Config {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	path := os.Getenv("WRENN_TEST_RUNSC")
	if path == "" {
		t.Fatal("gVisor tests need runsc: set WRENN_TEST_RUNSC=$(scripts/runsc.sh) (make test does)")
	}
	cfg := testConfig(t, t.TempDir())
	n := gvisorSeq.Add(1)
	cfg.Network.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 150+int(n)%10))
	cfg.Runtime = container.RuntimeRunsc
	cfg.RunscPath = path
	cfg.DisableLXCFS = true
	cfg.RunscFlags = strings.Fields(os.Getenv("WRENN_TEST_RUNSC_FLAGS"))
	return cfg
}

// gvisorDriver opens a recovered gVisor driver cleaned up with the test.
func gvisorDriver(t testing.TB) *container.Driver {
	t.Helper()
	cfg := gvisorConfig(t)
	// Runs after the driver's own cleanup (LIFO): runsc's null-netns bind
	// mount must not outlive the test's temp dir, whatever the order of
	// the last Destroy and Close was.
	t.Cleanup(func() { _ = unix.Unmount(filepath.Join(cfg.StateDir, "runc", "null-netns"), unix.MNT_DETACH) })
	d := openDriver(t, cfg)
	if d.Runtime() != container.RuntimeRunsc || d.Name() != "gvisor" {
		t.Fatalf("driver runtime %q name %q, want runsc/gvisor", d.Runtime(), d.Name())
	}
	return d
}

func TestGVisorConformance(t *testing.T) {
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver { return gvisorDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(runtimetest.EnvdExecFunc),
	)
}

// TestIsolationsRouter: one runtime.Isolations holding a runc driver
// (container) and a runsc driver (gvisor) sends each capsule to the driver
// of its isolation, reports it, and refuses an isolation the host lacks
// with ErrNotSupported and its reason.
func TestIsolationsRouter(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	runcCfg := testConfig(t, t.TempDir())
	runcCfg.Network.Subnet = netip.MustParsePrefix("10.159.0.0/16")
	m := runtime.NewIsolations(runtime.IsolationContainer)
	m.Register(runtime.IsolationContainer, openDriver(t, runcCfg))
	m.Register(runtime.IsolationGVisor, gvisorDriver(t))
	m.Unavailable(runtime.IsolationMicroVM, "no microVM driver in this test")
	if got := m.Supported(); !slices.Equal(got, []string{"container", "gvisor"}) {
		t.Errorf("Supported = %v", got)
	}
	for _, tt := range []struct{ id, iso, want string }{
		{"cl-iso-default", "", "container"},
		{"cl-iso-runc", "container", "container"},
		{"cl-iso-gvisor", "gvisor", "gvisor"},
	} {
		if _, err := m.Create(ctx, runtime.Spec{ID: tt.id, Template: tmplName, Isolation: tt.iso}); err != nil {
			t.Fatalf("Create %s: %v", tt.id, err)
		}
		info, err := m.Start(ctx, tt.id)
		if err != nil {
			t.Fatalf("Start %s: %v", tt.id, err)
		}
		runtimetest.WaitHealthy(t, info)
		if info.Isolation != tt.want {
			t.Errorf("%s: isolation %q, want %q", tt.id, info.Isolation, tt.want)
		}
	}
	// /proc/version is the host kernel's in the container capsule and
	// gVisor's own in the gVisor capsule.
	host, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	for id, wantHost := range map[string]bool{"cl-iso-runc": true, "cl-iso-gvisor": false} {
		out, err := runtimetest.EnvdExecFunc(ctx, m, id, "cat", "/proc/version")
		if err != nil || (strings.TrimSpace(out) == strings.TrimSpace(string(host))) != wantHost {
			t.Errorf("%s: /proc/version %q (host %q): %v, want the host's = %v", id, out, host, err, wantHost)
		}
	}
	_, err = m.Create(ctx, runtime.Spec{ID: "cl-iso-vm", Template: tmplName, Isolation: "microvm"})
	if !errors.Is(err, runtime.ErrNotSupported) || !strings.Contains(err.Error(), "no microVM driver in this test") {
		t.Errorf("Create microvm: %v, want ErrNotSupported with the reason", err)
	}
	if _, err := m.Create(ctx, runtime.Spec{ID: "cl-iso-gvisor", Template: tmplName}); !errors.Is(err, runtime.ErrExists) {
		t.Errorf("Create of a gvisor capsule's ID on the container driver: %v, want ErrExists", err)
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("List: %v %d", err, len(list))
	}
	for _, id := range []string{"cl-iso-default", "cl-iso-runc", "cl-iso-gvisor"} {
		if err := m.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy %s: %v", id, err)
		}
	}
	if _, err := m.Inspect(ctx, "cl-iso-gvisor"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Inspect after Destroy: %v", err)
	}
}
