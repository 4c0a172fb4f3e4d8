package container

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

var _ runtime.TemplateExporter = (*Driver)(nil)

// ExportTemplate implements runtime.TemplateExporter: GNU tar archives the
// capsule's overlay as the host mounted it (the rootfs directory of its
// bundle). The capsule's own mounts (/proc, /sys, /dev, the tmpfs mounts,
// the bind-mounted envd and LXCFS files) live in its mount namespace only
// (rootfs propagation private), so the archive holds the directories under
// them as the image has them: not /proc/<pid>/root, where each mount point
// carries the mounted file system's owner and mode (sysfs and procfs:
// 0555), which capsule root of a capsule made from the template could not
// make restore mount points in (issue 16). The capsule's lock is not held
// while tar runs (Inspect and Stats go on); the caller serialises actions
// on the capsule and freezes it for a consistent copy.
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
	// For runsc too: the sentry's root is an empty chroot, the capsule's
	// files are the overlay the gofer serves.
	root := d.paths(rec.Key).Root()
	args := []string{"--one-file-system", "--numeric-owner", "--xattrs", "--acls", "--sparse"}
	if rec.IDBase != 0 {
		// The host sees a user-namespaced capsule's files under its host id
		// range; a template stores capsule ids (root = 0), so capsules made
		// from it, each with its own range, own their files.
		maps, cleanup, err := idMapFiles(root, rec.IDBase)
		if err != nil {
			return fmt.Errorf("export capsule %s: %w", id, err)
		}
		defer cleanup()
		args = append(args, "--owner-map="+maps[0], "--group-map="+maps[1])
	}
	cmd := exec.CommandContext(ctx, "tar", append(args, "-C", root, "-cf", dst, ".")...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	// GNU tar exits 1 when a file changed while it was read: acceptable
	// for a capsule that is not frozen.
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 1) {
		return fmt.Errorf("export capsule %s: tar: %w: %s", id, err, out)
	}
	return nil
}

// idMapFiles writes GNU tar --owner-map and --group-map files that turn
// every host id of base's range found under root (one file system) back
// into the capsule's own id (host id − base). Ids outside the range (none
// in a healthy capsule) are left as they are.
func idMapFiles(root string, base uint32) (maps [2]string, cleanup func(), err error) {
	uids, gids := map[uint32]bool{}, map[uint32]bool{}
	var dev uint64
	if fi, err := os.Lstat(root + "/."); err == nil {
		dev = fi.Sys().(*syscall.Stat_t).Dev
	}
	walkErr := filepath.WalkDir(root+"/.", func(_ string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil //nolint:nilerr // a file gone while walking: tar reports what matters
		}
		fi, err := de.Info()
		if err != nil {
			return nil //nolint:nilerr // as above
		}
		st := fi.Sys().(*syscall.Stat_t)
		if de.IsDir() && st.Dev != dev {
			return filepath.SkipDir // --one-file-system
		}
		uids[st.Uid], gids[st.Gid] = true, true
		return nil
	})
	if walkErr != nil {
		return maps, nil, walkErr
	}
	dir, err := os.MkdirTemp("", "wrenn-idmap-")
	if err != nil {
		return maps, nil, err
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	for i, ids := range []map[uint32]bool{uids, gids} {
		var b strings.Builder
		for host := range ids {
			if host >= base && host-base < idRangeSize {
				fmt.Fprintf(&b, "+%d +%d\n", host, host-base)
			}
		}
		maps[i] = filepath.Join(dir, [2]string{"owners", "groups"}[i])
		if err := os.WriteFile(maps[i], []byte(b.String()), 0o600); err != nil {
			cleanup()
			return maps, nil, err
		}
	}
	return maps, cleanup, nil
}
