package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
)

// Keys of one snapshot in the store: <id>.disk (writable disk), <id>.mem
// (guest RAM), <id>.dev (VMM device state).
const (
	diskSuffix = ".disk"
	memSuffix  = ".mem"
	devSuffix  = ".dev"
)

// balloonMargin is the free memory the balloon leaves the guest when it
// inflates before a pause to disk.
const balloonMargin = 16 << 20

// balloonStatsSeconds is the guest's periodic balloon statistics interval.
const balloonStatsSeconds = 5

// MemorySnapshots implements runtime.Snapshotter: a VM's memory is always
// kept.
func (d *Driver) MemorySnapshots() bool { return true }

func (d *Driver) devPath(key string) string { return filepath.Join(d.dir(key), "devstate") }

// inflate asks the balloon to take the guest's available memory (less a
// margin) and waits, at most wait, for the guest to hand it over: those
// pages are then holes of the RAM file that the snapshot does not store.
// The figures are fresh: the guest is asked for a report now (about a
// second) rather than trusting the periodic one, up to 5 s old, which
// may predate memory the guest has just freed. Best effort: a guest that
// sends no statistics is left alone.
func (d *Driver) inflate(ctx context.Context, c *capsule, wait time.Duration) {
	total := int64(c.rec.Spec.MemoryMB) << 20
	var info BalloonInfo
	err := errors.New("no statistics")
	if r, ok := c.m.(BalloonStatsRefresher); ok {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		info, err = r.RefreshBalloonStats(rctx, balloonStatsSeconds)
		cancel()
		if err != nil {
			d.log.Debug("balloon: no fresh statistics; using the last report", "capsule_id", c.rec.ID, "err", err)
		}
	}
	if err != nil {
		info, err = c.m.Balloon(ctx)
	}
	if err != nil || info.AvailableBytes <= 0 {
		d.log.Debug("balloon: no guest statistics; not inflating", "capsule_id", c.rec.ID, "err", err)
		return
	}
	target := total - (info.AvailableBytes - balloonMargin)
	if target >= info.ActualBytes {
		return
	}
	if err := c.m.SetBalloon(ctx, target); err != nil {
		d.log.Debug("balloon: inflate", "capsule_id", c.rec.ID, "err", err)
		return
	}
	deadline := time.Now().Add(wait)
	last := info.ActualBytes
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		b, err := c.m.Balloon(ctx)
		if err != nil {
			return
		}
		last = b.ActualBytes
		if last <= target+(1<<20) {
			break
		}
	}
	d.log.Debug("balloon inflated", "capsule_id", c.rec.ID, "target", target, "actual", last)
}

// deflate gives the guest all its memory back.
func (d *Driver) deflate(ctx context.Context, c *capsule) {
	if err := c.m.SetBalloon(ctx, int64(c.rec.Spec.MemoryMB)<<20); err != nil {
		d.log.Debug("balloon: deflate", "capsule_id", c.rec.ID, "err", err)
	}
}

// Snapshot implements runtime.Snapshotter: balloon inflated, vCPUs
// stopped, device state saved (shared RAM skipped), VM ended; then the
// RAM file, the device state and the writable disk go through the
// snapshot engine (zero blocks skipped; the RAM a diff over the snapshot
// the capsule was restored from, merged per MaxDiffGenerations), the
// local copies and the network are released and the capsule is
// snapshotted. A failure before the VM ends leaves it running; a failure
// while publishing leaves it stopped with its disk.
func (d *Driver) Snapshot(ctx context.Context, id string) (runtime.SnapshotInfo, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.SnapshotInfo{}, err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	rec := &c.rec
	if rec.State != runtime.StateRunning && rec.State != runtime.StatePaused {
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot %s in state %s: %w", id, rec.State, runtime.ErrInvalidState)
	}
	wasRunning := rec.State == runtime.StateRunning
	if wasRunning {
		d.inflate(ctx, c, 5*time.Second)
	}
	f, err := os.OpenFile(d.devPath(rec.Key), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return runtime.SnapshotInfo{}, err
	}
	err = c.m.SaveState(ctx, f)
	err = errors.Join(err, f.Close())
	if err != nil {
		_ = os.Remove(d.devPath(rec.Key))
		if wasRunning {
			rctx := context.WithoutCancel(ctx)
			_ = c.m.Resume(rctx)
			d.deflate(rctx, c)
		}
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot %s: save state: %w", id, err)
	}
	// The VM has stopped; ending it flushes nothing more (RAM is the file).
	if err := c.m.Stop(ctx); err != nil {
		return runtime.SnapshotInfo{}, err
	}
	c.m, rec.PID = nil, 0
	name := "vm-" + id + "-" + newKey()
	info := runtime.SnapshotInfo{
		ID: name, CapsuleID: id, Template: rec.Spec.Template, MemoryKept: true,
		Spec: rec.Spec, CreatedAt: time.Now().UTC(),
		Keys: []string{name + diskSuffix, name + memSuffix, name + devSuffix},
	}
	md := map[string]string{"template_id": rec.Spec.Template, "capsule_id": id}
	publish := func(key, path, parent string) error {
		opts := snapshot.PauseOptions{Metadata: md}
		if parent != "" {
			opts.Parent = parent
		}
		_, err := d.snaps.Pause(ctx, key, path, opts)
		if err != nil && parent != "" {
			// A parent that cannot be read (deleted, corrupt) costs a
			// full image, not the pause.
			d.log.Warn("snapshot: diff over the parent failed; storing a full image", "capsule_id", id, "parent", parent, "err", err)
			opts.Parent = ""
			_, err = d.snaps.Pause(ctx, key, path, opts)
		}
		return err
	}
	parent := func(suffix string) string {
		if rec.Parent == "" {
			return ""
		}
		return rec.Parent + suffix
	}
	t0 := time.Now()
	err = errors.Join(
		publish(info.Keys[1], d.memPath(rec.Key), parent(memSuffix)),
		publish(info.Keys[2], d.devPath(rec.Key), ""),
		publish(info.Keys[0], d.diskPath(rec.Key), parent(diskSuffix)),
	)
	if err != nil {
		_ = d.deleteSnapshot(context.WithoutCancel(ctx), name)
		_ = removeMissingOK(d.memPath(rec.Key))
		_ = removeMissingOK(d.devPath(rec.Key))
		rec.State = runtime.StateStopped
		_ = d.save(rec)
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot %s: publish (the capsule is stopped, its files kept): %w", id, err)
	}
	d.log.Debug("snapshot published", "capsule_id", id, "snapshot", name, "took", time.Since(t0))
	errs := []error{
		removeMissingOK(d.memPath(rec.Key)), removeMissingOK(d.devPath(rec.Key)),
		removeMissingOK(d.diskPath(rec.Key)), d.teardownNet(rec),
	}
	if rec.Parent != "" {
		errs = append(errs, d.deleteSnapshot(context.WithoutCancel(ctx), rec.Parent))
		rec.Parent = ""
	}
	rec.State, rec.Snapshot = runtime.StateSnapshotted, &info
	errs = append(errs, d.save(rec))
	return info, errors.Join(errs...)
}

// deleteSnapshot deletes the three images of snapshot name and the data
// no other image references.
func (d *Driver) deleteSnapshot(ctx context.Context, name string) error {
	var errs []error
	for _, s := range []string{memSuffix, devSuffix, diskSuffix} {
		if _, err := d.snaps.DeleteAndFree(ctx, name+s); err != nil && !isNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	return errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "not found")
}

// Restore implements runtime.Snapshotter: the network is set up again
// (the guest keeps 169.254.0.21; the capsule may get another outside
// address), the disk, RAM and device state are materialised from the
// store (sparse files holding only stored blocks: the RAM file's pages
// are read as the guest touches them), the VM loads its device state over
// the RAM file, resumes and gets its balloon back. A failure destroys the
// half-restored VM and everything it held; the snapshot stays (and a
// snapshotted record of this driver stays snapshotted).
func (d *Driver) Restore(ctx context.Context, snap runtime.SnapshotInfo) (runtime.Info, error) {
	if snap.ID == "" || snap.CapsuleID == "" || len(snap.Keys) != 3 || snap.Keys[1] != snap.ID+memSuffix {
		return runtime.Info{}, fmt.Errorf("%w: not a microVM snapshot: %+v", runtime.ErrInvalidSpec, snap.Keys)
	}
	spec := snap.Spec
	spec.ID = snap.CapsuleID
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	// A snapshotted record of the capsule on this driver is replaced.
	var old *capsule
	d.mu.Lock()
	if o := d.caps[spec.ID]; o != nil {
		o.mu.Lock()
		if o.rec.State != runtime.StateSnapshotted || o.gone {
			o.mu.Unlock()
			d.mu.Unlock()
			return runtime.Info{}, fmt.Errorf("capsule %q: %w", spec.ID, runtime.ErrExists)
		}
		old = o
		delete(d.caps, spec.ID)
	}
	d.mu.Unlock()
	c := &capsule{rec: record{ID: spec.ID, Key: newKey(), Spec: spec, State: runtime.StateCreated, CreatedAt: time.Now().UTC()}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		if old != nil {
			old.mu.Unlock()
		}
		return runtime.Info{}, err
	}
	rec := &c.rec
	s := &runtime.Steps{Op: OpRestore, ID: spec.ID}
	s.Append(d.createSteps(rec, tmpl)...)
	s.Append(runtime.Step{
		Name: "fetch",
		Do: func(ctx context.Context) error {
			for _, f := range []struct{ key, path string }{
				{snap.ID + diskSuffix, d.diskPath(rec.Key)},
				{snap.ID + memSuffix, d.memPath(rec.Key)},
				{snap.ID + devSuffix, d.devPath(rec.Key)},
			} {
				r, err := d.snaps.Open(ctx, f.key)
				if err != nil {
					return fmt.Errorf("snapshot %s: %w", f.key, err)
				}
				if f.path == d.memPath(rec.Key) && r.Size() != int64(spec.MemoryMB)<<20 {
					return fmt.Errorf("snapshot %s: RAM image of %d bytes for a %d MiB capsule", f.key, r.Size(), spec.MemoryMB)
				}
				if err := r.WriteFile(ctx, f.path); err != nil {
					return fmt.Errorf("snapshot %s: %w", f.key, err)
				}
			}
			return nil
		},
		Undo: func(context.Context) error {
			return errors.Join(removeMissingOK(d.memPath(rec.Key)), removeMissingOK(d.devPath(rec.Key)), removeMissingOK(d.diskPath(rec.Key)))
		},
	})
	var dev *os.File
	defer func() {
		if dev != nil {
			dev.Close()
		}
	}()
	s.Append(d.bootSteps(c, func() *os.File {
		dev, _ = os.Open(d.devPath(rec.Key))
		return dev
	})...)
	s.Append(
		runtime.Step{Name: "resume", Do: func(ctx context.Context) error {
			if err := c.m.Resume(ctx); err != nil {
				return err
			}
			d.deflate(ctx, c)
			return nil
		}},
		runtime.Step{Name: "wait-ready", Do: func(ctx context.Context) error { return d.waitReady(ctx, c) }},
		runtime.Step{Name: "state", Do: func(context.Context) error {
			_ = removeMissingOK(d.devPath(rec.Key))
			rec.State, rec.StartedAt, rec.Memory, rec.Parent = runtime.StateRunning, time.Now().UTC(), true, snap.ID
			return d.save(rec)
		}},
	)
	// The boot step's Launch gets the device state as an open file.
	if err := d.hook(s).Run(ctx); err != nil {
		d.unreserve(spec.ID, c)
		c.gone = true
		if old != nil {
			d.mu.Lock()
			if d.caps[spec.ID] == nil {
				d.caps[spec.ID] = old
			}
			d.mu.Unlock()
			old.mu.Unlock()
		}
		return runtime.Info{}, err
	}
	if old != nil {
		// The capsule lives on under a new key: drop the old record
		// (the snapshot it names is now the parent of the new one).
		old.gone = true
		_ = os.RemoveAll(d.dir(old.rec.Key))
		old.mu.Unlock()
	}
	return d.info(rec), nil
}
