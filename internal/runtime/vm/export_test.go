package vm_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestTemplateFromMicroVM: a microVM capsule is a template source. Its
// files (written just before the export, the capsule paused as the agent
// does) and deletions (overlay whiteouts on the writable disk) are in the
// archive, and a microVM booted from the imported template sees them.
func TestTemplateFromMicroVM(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, 5*time.Minute)
	startCapsule(t, d, runtime.Spec{ID: "cl-src"})
	mustExec(t, d, "cl-src", "mkdir -p /opt/app && echo built > /opt/app/version && rm /etc/group")
	if err := d.Pause(ctx, "cl-src"); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "export.tar")
	t0 := time.Now()
	if err := d.ExportTemplate(ctx, "cl-src", dst); err != nil {
		t.Fatalf("ExportTemplate: %v", err)
	}
	t.Logf("export of a paused microVM took %v", time.Since(t0).Round(time.Millisecond))
	if got, _ := d.Inspect(ctx, "cl-src"); got.State != runtime.StatePaused {
		t.Errorf("state after exporting a paused capsule = %s, want paused", got.State)
	}
	if _, err := templates.ImportTarball(ctx, "from-vm", dst); err != nil {
		t.Fatalf("ImportTarball: %v", err)
	}
	defer func() { _ = templates.Delete("from-vm") }()
	startCapsule(t, d, runtime.Spec{ID: "cl-child", Template: "from-vm"})
	if out := mustExec(t, d, "cl-child", "cat /opt/app/version; test -e /etc/group && echo group-back || echo group-gone; hostname"); out != "built\ngroup-gone\ncl-child\n" {
		t.Errorf("capsule of the exported template: %q", out)
	}
}
