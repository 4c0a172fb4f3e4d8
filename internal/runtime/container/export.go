package container

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

var _ runtime.TemplateExporter = (*Driver)(nil)

// ExportTemplate implements runtime.TemplateExporter: GNU tar archives the
// capsule's root as its init sees it (/proc/<pid>/root), staying on that
// one file system, so /proc, /sys, /dev, the tmpfs mounts and the
// bind-mounted envd are left out. The capsule's lock is not held while tar
// runs (Inspect and Stats go on); the caller serialises actions on the
// capsule and freezes it for a consistent copy.
func (d *Driver) ExportTemplate(ctx context.Context, id, dst string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	rec := c.rec
	c.mu.Unlock()
	if rec.State != runtime.StateRunning && rec.State != runtime.StatePaused {
		return fmt.Errorf("export capsule %s in state %s: %w", id, rec.State, runtime.ErrInvalidState)
	}
	if !d.alive(&rec) {
		return fmt.Errorf("export capsule %s: its init is not running: %w", id, runtime.ErrInvalidState)
	}
	root := "/proc/" + strconv.Itoa(rec.PID) + "/root"
	cmd := exec.CommandContext(ctx, "tar", "--one-file-system", "--numeric-owner", "--xattrs", "--acls",
		"--sparse", "-C", root, "-cf", dst, ".")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	// GNU tar exits 1 when a file changed while it was read: acceptable
	// for a capsule that is not frozen.
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 1) {
		return fmt.Errorf("export capsule %s: tar: %w: %s", id, err, out)
	}
	return nil
}
