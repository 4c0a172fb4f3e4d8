package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// DirStore is a runtime.SnapshotStore in a local directory.
type DirStore struct {
	Dir string
}

func (s DirStore) path(key string) (string, error) {
	clean := filepath.Clean("/" + key)
	if key == "" || clean != "/"+key {
		return "", fmt.Errorf("snapshot store: bad key %q", key)
	}
	return filepath.Join(s.Dir, clean), nil
}

// Put implements runtime.SnapshotStore; the object appears atomically.
func (s DirStore) Put(_ context.Context, key string, r io.Reader) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".put-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("snapshot store: write %s: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// Get implements runtime.SnapshotStore.
func (s DirStore) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// Delete implements runtime.SnapshotStore.
func (s DirStore) Delete(_ context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(filepath.Dir(p)) // the snapshot's directory, once empty
	return nil
}

// MemorySnapshots implements runtime.Snapshotter. Memory checkpoints need a
// working CRIU; this driver does not checkpoint memory yet, so snapshots
// keep files only and Restore reports MemoryKept=false.
func (d *Driver) MemorySnapshots() bool { return false }

// Snapshot implements runtime.Snapshotter: it stops the capsule, archives
// the upper directory (tar with overlay xattrs, so whiteouts survive) into
// the snapshot store and frees every host resource except the record.
func (d *Driver) Snapshot(ctx context.Context, id string) (runtime.SnapshotInfo, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.SnapshotInfo{}, err
	}
	defer c.mu.Unlock()
	rec := &c.rec
	switch rec.State {
	case runtime.StateRunning, runtime.StatePaused, runtime.StateStopped, runtime.StateCreated:
	default:
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s in state %s: %w", id, rec.State, runtime.ErrInvalidState)
	}
	if err := d.stop(ctx, rec, 2*time.Second); err != nil {
		return runtime.SnapshotInfo{}, err
	}
	snapID := fmt.Sprintf("%s-%d", rec.ID, time.Now().UnixNano())
	key := snapID + "/upper.tar"
	if err := d.archiveUpper(ctx, rec, key); err != nil {
		return runtime.SnapshotInfo{}, err
	}
	snap := runtime.SnapshotInfo{
		ID: snapID, CapsuleID: rec.ID, Template: rec.Spec.Template, MemoryKept: false,
		Spec: rec.Spec, CreatedAt: time.Now().UTC(), Keys: []string{key},
	}
	// Free the host: processes are gone; now mounts, loop, network.
	d.release(ctx, rec)
	rec.State = runtime.StateSnapshotted
	rec.Snapshot = &snap
	rec.Net = network.Allocation{}
	if err := os.MkdirAll(filepath.Join(d.capsDir, rec.Key), 0o700); err != nil {
		return snap, err
	}
	if err := d.save(rec); err != nil {
		return snap, err
	}
	return snap, nil
}

func (d *Driver) archiveUpper(ctx context.Context, rec *record, key string) error {
	p := d.paths(rec.Key)
	cmd := exec.CommandContext(ctx, "tar", "--xattrs", "--xattrs-include=trusted.*", "--xattrs-include=user.*",
		"--numeric-owner", "--sparse", "-cpf", "-", "-C", p.Upper(), ".")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("container: tar: %w", err)
	}
	perr := d.cfg.Snapshots.Put(ctx, key, out)
	werr := cmd.Wait()
	if perr != nil {
		return fmt.Errorf("container: store %s: %w", key, perr)
	}
	if werr != nil {
		return fmt.Errorf("container: tar upper: %w: %s", werr, stderr.String())
	}
	return nil
}

// Restore implements runtime.Snapshotter: it rebuilds the capsule under its
// original ID with the archived files in its writable layer and boots it
// again (memory is not kept). A failed restore leaves nothing behind.
func (d *Driver) Restore(ctx context.Context, snap runtime.SnapshotInfo) (runtime.Info, error) {
	if len(snap.Keys) == 0 || snap.CapsuleID == "" {
		return runtime.Info{}, fmt.Errorf("%w: empty snapshot", runtime.ErrInvalidSpec)
	}
	spec := snap.Spec
	spec.ID = snap.CapsuleID
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	// A snapshotted record of this capsule on this host is replaced.
	if old, err := d.get(spec.ID); err == nil {
		if old.rec.State != runtime.StateSnapshotted {
			old.mu.Unlock()
			return runtime.Info{}, fmt.Errorf("restore capsule %s in state %s: %w", spec.ID, old.rec.State, runtime.ErrExists)
		}
		d.destroyLocked(ctx, old)
		old.mu.Unlock()
	}
	c := &capsule{}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	fill := func(upper string) error { return d.extract(ctx, snap.Keys[0], upper) }
	rec, err := d.build(ctx, spec, tmpl, false, fill)
	if err != nil {
		d.unreserve(spec.ID, c)
		return runtime.Info{}, err
	}
	c.rec = rec
	if err := d.start(ctx, &c.rec); err != nil {
		d.log.Error("restore failed, destroying capsule", "id", spec.ID, "err", err)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		d.destroyLocked(cctx, c)
		return runtime.Info{}, fmt.Errorf("restore capsule %s (destroyed): %w", spec.ID, err)
	}
	c.rec.Memory = false
	_ = d.save(&c.rec)
	return d.info(&c.rec), nil
}

func (d *Driver) extract(ctx context.Context, key, upper string) error {
	r, err := d.cfg.Snapshots.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("container: snapshot %s: %w", key, err)
	}
	defer r.Close()
	cmd := exec.CommandContext(ctx, "tar", "--xattrs", "--xattrs-include=trusted.*", "--xattrs-include=user.*",
		"--numeric-owner", "-xpf", "-", "-C", upper)
	cmd.Stdin = r
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("container: untar snapshot: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
