package vm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestBadInput: what the VM path cannot run fails with a clear error and
// leaves nothing behind.
func TestBadInput(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, 3*time.Minute)

	t.Run("memory beyond the host", func(t *testing.T) {
		_, err := d.Create(ctx, runtime.Spec{ID: "cl-huge", Template: tmplName, MemoryMB: 1 << 22})
		if !errors.Is(err, runtime.ErrInvalidSpec) || !strings.Contains(err.Error(), "more than this host has") {
			t.Errorf("err = %v, want ErrInvalidSpec naming the host's memory", err)
		}
	})
	t.Run("missing kernel", func(t *testing.T) {
		cfg := testConfig(t, t.TempDir())
		cfg.KernelDir = filepath.Join(t.TempDir(), "no-kernel")
		if _, err := vm.New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "guest-kernel.sh") {
			t.Errorf("vm.New without a kernel: err = %v, want one naming scripts/guest-kernel.sh", err)
		}
	})
	t.Run("missing qemu", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if _, err := vm.NewQEMU(t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "qemu-system-x86") {
			t.Errorf("NewQEMU without qemu: err = %v", err)
		}
	})
	t.Run("template that cannot boot", func(t *testing.T) {
		// /usr is a file: the guest init cannot put envd in place.
		src := t.TempDir()
		if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "usr"), []byte("not a directory"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := templates.ImportDir(ctx, "broken-vm", src); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = templates.Delete("broken-vm") }()
		if _, err := d.Create(ctx, runtime.Spec{ID: "cl-broken", Template: "broken-vm"}); err != nil {
			t.Fatalf("Create: %v", err)
		}
		_, err := d.Start(ctx, "cl-broken")
		if err == nil || !strings.Contains(err.Error(), "wrenn-init") {
			t.Fatalf("Start of an unbootable template: err = %v, want the guest init's message", err)
		}
		t.Logf("Start: %v", err)
		got, _ := d.Inspect(ctx, "cl-broken")
		if got.State != runtime.StateStopped || got.PID != 0 {
			t.Errorf("after a failed boot: %+v", got)
		}
		if n := vmProcesses(t, d.Config().SocketDir); n != 0 {
			t.Errorf("%d VM processes left after a failed boot", n)
		}
		if err := d.Destroy(ctx, "cl-broken"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		nothingLeft(t, d)
	})
	t.Run("envd that cannot run", func(t *testing.T) {
		// The guest's init execs envd as PID 1: a file that is not a
		// program (a broken envd build) panics the guest kernel.
		bad := filepath.Join(t.TempDir(), "envd")
		if err := os.WriteFile(bad, []byte("not an ELF program\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t, t.TempDir())
		cfg.EnvdPath = bad
		d := openDriver(t, cfg)
		if _, err := d.Create(ctx, runtime.Spec{ID: "cl-noenvd", Template: tmplName}); err != nil {
			t.Fatalf("Create: %v", err)
		}
		_, err := d.Start(ctx, "cl-noenvd")
		if err == nil || !strings.Contains(err.Error(), "guest stopped before envd answered") || !strings.Contains(err.Error(), "switch_root") {
			t.Fatalf("Start without a runnable envd: err = %v", err)
		}
		t.Logf("Start: %v", err)
		if n := vmProcesses(t, cfg.SocketDir); n != 0 {
			t.Errorf("%d VM processes left after a failed boot", n)
		}
		if err := d.Destroy(ctx, "cl-noenvd"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		nothingLeft(t, d)
	})
}

// nothingLeft checks that a driver with no capsules holds no VM process,
// network namespace, RAM file or capsule directory.
func nothingLeft(t *testing.T, d *vm.Driver) {
	t.Helper()
	cfg := d.Config()
	if n := vmProcesses(t, cfg.SocketDir); n != 0 {
		t.Errorf("%d VM processes left", n)
	}
	if ns, _ := d.Network().Namespaces(); len(ns) != 0 {
		t.Errorf("namespaces left: %v", ns)
	}
	if mems, _ := os.ReadDir(cfg.MemDir); len(mems) != 0 {
		t.Errorf("RAM files left: %v", mems)
	}
	if caps, _ := os.ReadDir(filepath.Join(cfg.StateDir, "capsules")); len(caps) != 0 {
		t.Errorf("capsule directories left: %v", caps)
	}
}
