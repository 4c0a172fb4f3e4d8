package container_test

import (
	"fmt"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/fakeinet"
)

// TestColdSpares: with ColdSpares on, the driver keeps that many spares
// (network held, blank disk mounted) once Recover has run; a cold create
// of the default disk size takes one, gets the policy it asked for (with
// internet it reaches the internet, without it does not), runs envd on
// the template's files and is refilled; a create with another disk size
// takes none. Destroying the capsules and closing the driver leaves no
// host object; spares a crash abandons are cleaned by the next Recover.
func TestColdSpares(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	ctx := testutil.Context(t, testutil.Long)
	inetAddr := fakeinet.New(t, "csp").Serve(t)
	cfg := testConfig(t, t.TempDir())
	cfg.ColdSpares = 2
	d, err := container.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = d.Close()
		}
	})
	if _, err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	full := func() bool { n, _, _ := d.SpareCount(); return n == 2 }
	for i, internet := range []bool{true, false} {
		testutil.Eventually(t, testutil.Long, full, "spares made")
		id := fmt.Sprintf("cl-spare%d", i)
		startCapsule(t, d, runtime.Spec{ID: id, Template: tmplName, AllowInternet: internet})
		if _, hits, _ := d.SpareCount(); hits != uint64(i+1) {
			t.Errorf("create %d: %d spares taken, want %d", i, hits, i+1)
		}
		if out, err := runcExec(ctx, d, id, "cat", "/etc/hostname"); err != nil || out != id+"\n" {
			t.Errorf("%s: /etc/hostname %q %v", id, out, err)
		}
		if got, out := fetch(ctx, d, id, inetAddr, "/health"); got != internet {
			t.Errorf("spare capsule with allow_internet=%v: internet reachable = %v (%s)", internet, got, out)
		}
	}
	testutil.Eventually(t, testutil.Long, full, "spares refilled")
	startCapsule(t, d, runtime.Spec{ID: "cl-spare-big", Template: tmplName, DiskSizeMB: cfg.DefaultDiskSizeMB * 2})
	if _, hits, _ := d.SpareCount(); hits != 2 {
		t.Errorf("a create with another disk size took a spare (%d taken)", hits)
	}
	for _, id := range []string{"cl-spare0", "cl-spare1", "cl-spare-big"} {
		if err := d.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// A crash: the spares stay on the host; the next driver's Recover
	// (spares off) must clean them.
	testutil.Eventually(t, testutil.Long, full, "spares refilled")
	container.AbandonSpares(d)
	d2 := openDriver(t, testConfigOn(cfg))
	if list, _ := d2.List(ctx); len(list) != 0 {
		t.Errorf("recover adopted %v", list)
	}
	testutil.Eventually(t, testutil.Long, func() bool {
		got, err := d2.CountHostObjects()
		return err == nil && got == container.Leaks{Rules: got.Rules} && got.Rules == baseRules
	}, "host clean after the crash's spares are recovered")
	assertClean(t, d2)
	assertNoCapsuleDirs(t, cfg.StateDir)
	closed = true
	_ = d.Close() // nothing left to release
}

// testConfigOn is cfg with spares off (the driver after a crash).
func testConfigOn(cfg container.Config) container.Config {
	cfg.ColdSpares = 0
	return cfg
}
