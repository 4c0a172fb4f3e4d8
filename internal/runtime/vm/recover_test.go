package vm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestRecover: a new driver (agent restart) re-adopts a running VM and
// removes what it cannot adopt.
func TestRecover(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	ctx := testutil.Context(t, 3*time.Minute)
	d1, err := vm.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	info := startCapsule(t, d1, runtime.Spec{ID: "cl-rec"})
	_ = d1.Close()
	// Garbage a crash could leave: a capsule directory without state.
	junk := filepath.Join(cfg.StateDir, "capsules", "0123456789ab")
	if err := os.MkdirAll(junk, 0o700); err != nil {
		t.Fatal(err)
	}
	d2 := openDriver(t, cfg)
	got, err := d2.Inspect(ctx, "cl-rec")
	if err != nil || got.State != runtime.StateRunning || got.PID != info.PID {
		t.Fatalf("after Recover: %+v %v, want running with pid %d", got, err, info.PID)
	}
	if out, err := exec1(ctx, d2, "cl-rec", "hostname"); err != nil || strings.TrimSpace(out) != "cl-rec" {
		t.Errorf("exec after Recover: %v %q", err, out)
	}
	if err := d2.Pause(ctx, "cl-rec"); err != nil {
		t.Errorf("Pause after Recover: %v", err)
	}
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Errorf("junk capsule directory kept: %v", err)
	}
	if err := d2.Destroy(ctx, "cl-rec"); err != nil {
		t.Fatal(err)
	}
	if n := vmProcesses(t, cfg.SocketDir); n != 0 {
		t.Errorf("%d VM processes after Destroy", n)
	}
}
