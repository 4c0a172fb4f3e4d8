package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

var _ runtime.TemplateExporter = (*Driver)(nil)

// exportSettle is how long ExportTemplate lets the guest run before it
// copies the writable disk: the guest init makes the kernel write dirty
// pages back after 0.2 s (vm.dirty_expire_centisecs, checked every
// 0.2 s) and ext4 commit its journal every second on the writable disk,
// so what the guest wrote before the export began is on the disk by then.
const exportSettle = 2 * time.Second

// exportScript assembles a capsule's root file system from the copy of its
// writable disk ($1, mounted read-write so ext4 replays its journal) and
// the template image ($2), as the guest sees it (the disk's upper/ over
// the image, both as overlay lower layers: whiteouts and opaque
// directories apply), and archives it to $3; $4 is a scratch directory.
// It runs in a private mount namespace (unshare), so its loop mounts end
// with it whatever happens.
const exportScript = `set -e
disk=$1 img=$2 dst=$3 tmp=$4
mkdir -p "$tmp/rw" "$tmp/ro" "$tmp/root"
mount -o loop,nodev,nosuid "$disk" "$tmp/rw"
mount -o loop,ro,noload,nodev,nosuid "$img" "$tmp/ro"
mount -t overlay overlay -o ro,lowerdir="$tmp/rw/upper:$tmp/ro" "$tmp/root"
rc=0
tar --one-file-system --numeric-owner --xattrs --acls --sparse --exclude=./usr/local/bin/envd -C "$tmp/root" -cf "$dst" . || rc=$?
# GNU tar exits 1 when a file changed while read (not here: a copy).
[ "$rc" -le 1 ]
`

// ExportTemplate implements runtime.TemplateExporter for a running or
// paused microVM: the guest runs for exportSettle (so its page cache
// reaches the disk), is paused while its writable disk is copied (a
// sparse copy: a crash-consistent image), and returns to the state it was
// in; the copy (journal replayed) under the template image is archived
// with GNU tar, without envd (the driver's, bound in by the guest init).
// Memory that never reached the disk (tmpfs, files written in the last
// instant) is not in the archive, as with a container.
func (d *Driver) ExportTemplate(ctx context.Context, id, dst string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	rec := &c.rec
	if rec.State != runtime.StateRunning && rec.State != runtime.StatePaused {
		return fmt.Errorf("export capsule %s in state %s: %w", id, rec.State, runtime.ErrInvalidState)
	}
	wasPaused := rec.State == runtime.StatePaused
	tmp, err := os.MkdirTemp(d.dir(rec.Key), "export-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	copyPath := filepath.Join(tmp, "disk.ext4")
	err = func() error {
		if wasPaused {
			if err := c.m.Resume(ctx); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(exportSettle):
		}
		if err := c.m.Pause(ctx); err != nil {
			return err
		}
		out, err := exec.CommandContext(ctx, "cp", "--sparse=always", d.diskPath(rec.Key), copyPath).CombinedOutput()
		if err != nil {
			return fmt.Errorf("copy the writable disk: %w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}()
	if !wasPaused {
		err = errors.Join(err, c.m.Resume(context.WithoutCancel(ctx)))
	}
	if err != nil {
		return fmt.Errorf("export capsule %s: %w", id, err)
	}
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", exportScript, "sh", copyPath, rec.Image, dst, filepath.Join(tmp, "mnt"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("export capsule %s: %w: %s", id, err, bytes.TrimSpace(out))
	}
	return nil
}
