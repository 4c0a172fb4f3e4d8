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
		if err := d.Destroy(ctx, "cl-broken"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if ns, _ := d.Network().Namespaces(); len(ns) != 0 {
			t.Errorf("namespaces left: %v", ns)
		}
	})
}
