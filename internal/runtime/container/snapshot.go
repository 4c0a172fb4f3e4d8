package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// Header metadata keys of a capsule disk snapshot. The runtime.SnapshotInfo
// a caller keeps is authoritative; the metadata makes an image
// self-describing (inspectable with `wrenn snapshot inspect`) and lets
// Restore check that an info and an image belong together.
const (
	metaKind       = "wrenn.kind"
	metaDriver     = "wrenn.driver"
	metaCapsuleID  = "wrenn.capsule_id"
	metaTemplateID = "wrenn.template_id"
	metaVCPUs      = "wrenn.vcpus"
	metaMemoryMB   = "wrenn.memory_mb"
	metaDiskSizeMB = "wrenn.disk_size_mb"
	metaInternet   = "wrenn.allow_internet"
	metaNetwork    = "wrenn.network_policy"
	metaCreatedAt  = "wrenn.created_at"

	kindDisk = "capsule-disk-ext4"
)

// MemorySnapshots implements runtime.Snapshotter: true when `criu check`
// passed at start (see criu.go). Without it snapshots keep the writable
// disk only and Restore reports MemoryKept=false.
func (d *Driver) MemorySnapshots() bool { return d.criu }

// SnapshotManager returns the snapshot engine the driver publishes capsule
// disks to (for inspection by tests and operator tools; the agent goes
// through CollectSnapshots).
func (d *Driver) SnapshotManager() *snapshot.Manager { return d.snaps }

// tempCleaner is implemented by stores that keep temp files of writes in
// progress (store.Local): files older than the age are from interrupted
// writes.
type tempCleaner interface {
	CleanTemp(age time.Duration) (int, error)
}

// CollectSnapshots implements runtime.SnapshotCollector: a mark and sweep
// of the snapshot engine (snapshot.Manager.GC) and, after a clean sweep,
// the local store's temp files of interrupted writes.
func (d *Driver) CollectSnapshots(ctx context.Context, minAge time.Duration) (runtime.SnapshotGCStats, error) {
	if d.snaps == nil {
		return runtime.SnapshotGCStats{}, nil
	}
	st, err := d.snaps.GC(ctx, minAge)
	out := runtime.SnapshotGCStats{Headers: st.Headers, LiveBuilds: st.LiveBuilds, Deleted: len(st.Deleted), DeletedBytes: st.DeletedBytes}
	if err != nil {
		return out, err
	}
	if tc, ok := d.snaps.Store.(tempCleaner); ok {
		n, err := tc.CleanTemp(minAge)
		out.TempRemoved = n
		if err != nil {
			return out, fmt.Errorf("container: snapshot temp cleanup: %w", err)
		}
	}
	return out, nil
}

// Snapshot implements runtime.Snapshotter (pause to disk). It stops the
// capsule, unmounts its overlay and the ext4 image (releasing the loop
// device), publishes the image to the snapshot engine — zero blocks are
// never stored, and a capsule restored from an earlier snapshot diffs
// against that parent (merged per the manager's MaxDiffGenerations) — and
// then frees every host resource, keeping only state.json. The snapshot's
// ID is the header name in the store.
//
// With CRIU (MemorySnapshots), a running or paused capsule's processes are
// first checkpointed with `runc checkpoint`; the images are published as a
// second header (<ID>.criu) before the disk header, which names it and is
// the commit point. A failed checkpoint or memory publish is logged and the
// snapshot keeps files only (MemoryKept=false).
//
// If publishing fails the capsule is left stopped with its disk remounted,
// so it can be started or snapshotted again; nothing partial is visible in
// the store.
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
	var (
		images   string
		criuKeys []string
	)
	// A capsule with volumes pauses with its files only (processes boot
	// again on resume): a CRIU restore of processes that use the volume
	// binds does not bring them back (docs/VOLUMES.md).
	if d.criu && len(rec.Spec.Volumes) == 0 && (rec.State == runtime.StateRunning || rec.State == runtime.StatePaused) {
		start := time.Now()
		images, criuKeys, err = d.checkpoint(ctx, rec)
		if err != nil {
			d.log.Warn("memory checkpoint failed, keeping files only", "id", id, "err", err)
		} else {
			d.log.Info("capsule memory checkpointed", "id", id, "took", time.Since(start), "images", images)
			// Whatever happens next, the dump goes (it may be on the
			// scratch tmpfs, outside the capsule's directory), with
			// what the store received of it.
			defer d.dropDump(images)
		}
	}
	if err := d.stop(ctx, rec, 2*time.Second); err != nil {
		return runtime.SnapshotInfo{}, err
	}
	crashPoint("stopped", "")
	p := d.paths(rec.Key)
	tmpl, err := d.cfg.Templates.Get(rec.Spec.Template)
	if err != nil {
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s: template %q: %w", id, rec.Spec.Template, err)
	}
	if err := detachDisk(ctx, p); err != nil {
		d.remount(rec, tmpl.Rootfs)
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s: %w", id, err)
	}
	now := time.Now().UTC()
	snapID := fmt.Sprintf("%s-%d", rec.ID, now.UnixNano())
	// From here to the commit below, a crash leaves the disk unmounted:
	// Recover sees Publishing, drops what the store received and mounts
	// the disk again (the capsule is kept, stopped).
	rec.Publishing = snapID
	if err := d.save(rec); err != nil {
		rec.Publishing = ""
		d.remount(rec, tmpl.Rootfs)
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s: %w", id, err)
	}
	crashPoint("detached", snapID)
	var memName string
	if images != "" {
		var memBytes int64
		memName, memBytes, err = d.publishMemory(ctx, rec, snapID, images, criuKeys, now)
		if err != nil {
			d.log.Warn("memory image not stored, keeping files only", "id", id, "err", err)
		} else {
			d.log.Info("capsule memory stored", "id", id, "snapshot", memName, "stored_bytes", memBytes)
		}
		_ = os.RemoveAll(images)
	}
	hdr, err := d.publish(ctx, rec, snapID, p.Image(), now, memName)
	if err != nil {
		if memName != "" {
			d.dropSnapshot(ctx, memName)
		}
		rec.Publishing = ""
		_ = d.save(rec)
		d.remount(rec, tmpl.Rootfs)
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s: %w", id, err)
	}
	crashPoint("published", snapID)
	keys := []string{snapID}
	if memName != "" {
		keys = append(keys, memName)
	}
	snap := runtime.SnapshotInfo{
		ID: snapID, CapsuleID: rec.ID, Template: rec.Spec.Template, MemoryKept: memName != "",
		Spec: rec.Spec, CreatedAt: now, Keys: keys,
	}
	d.log.Info("capsule disk snapshotted", "id", rec.ID, "snapshot", snapID, "memory", memName != "",
		"parent", rec.Parent, "generation", hdr.Generation, "stored_bytes", storedBytes(hdr))
	// The commit point: the record names the snapshot. A record that
	// cannot be written (a full disk) undoes the pause instead.
	was := *rec
	rec.State, rec.Snapshot, rec.Publishing, rec.Releasing = runtime.StateSnapshotted, &snap, "", true
	if err := d.save(rec); err != nil {
		*rec = was
		rec.Publishing = ""
		_ = d.save(rec)
		d.dropSnapshot(ctx, snapID)
		d.remount(rec, tmpl.Rootfs)
		return runtime.SnapshotInfo{}, fmt.Errorf("snapshot capsule %s: record the snapshot: %w", id, err)
	}
	crashPoint("committed", snapID)
	if err := d.finishSnapshot(ctx, rec); err != nil {
		return snap, err
	}
	return snap, nil
}

// crashHook, set only by tests (SetSnapshotCrashHook), is called at each
// step of a pause to disk: a test's helper process waits in it to be
// killed there.
var crashHook func(point, snapID string)

func crashPoint(point, snapID string) {
	if crashHook != nil {
		crashHook(point, snapID)
	}
}

// CommittedSnapshot implements runtime.CommittedSnapshots.
func (d *Driver) CommittedSnapshot(id string) (runtime.SnapshotInfo, bool) {
	c, err := d.get(id)
	if err != nil {
		return runtime.SnapshotInfo{}, false
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StateSnapshotted || c.rec.Snapshot == nil {
		return runtime.SnapshotInfo{}, false
	}
	return *c.rec.Snapshot, true
}

// finishSnapshot frees the host after a committed pause to disk (also
// one a crash interrupted: Recover calls it): the superseded parent image
// goes from the store, then processes, mounts, loop, network and the
// local image; the capsule's directory keeps only its state.json.
func (d *Driver) finishSnapshot(ctx context.Context, rec *record) error {
	// The new image supersedes the one the disk was restored from.
	if rec.Parent != "" && rec.Parent != rec.Snapshot.ID {
		d.dropSnapshot(ctx, rec.Parent)
	}
	d.releaseHost(ctx, rec, true)
	rec.Parent, rec.Net, rec.PID, rec.Releasing = "", network.Allocation{}, 0, false
	if err := os.MkdirAll(filepath.Join(d.capsDir, rec.Key), 0o700); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return d.save(rec)
}

// publish runs Manager.Pause on the detached image, diffing against the
// capsule's parent snapshot when it has one. A parent that is gone from the
// store (deleted by its other owner) is not an error: the image is then
// published whole.
func (d *Driver) publish(ctx context.Context, rec *record, name, image string, now time.Time, memName string) (*snapshot.Header, error) {
	md := snapshotMetadata(rec, now)
	if memName != "" {
		md[metaMemory] = memName
	}
	opts := snapshot.PauseOptions{Parent: rec.Parent, Metadata: md}
	hdr, err := d.snaps.Pause(ctx, name, image, opts)
	if err != nil && opts.Parent != "" && errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
		d.log.Warn("snapshot parent missing, storing the full image", "id", rec.ID, "parent", opts.Parent, "err", err)
		opts.Parent = ""
		hdr, err = d.snaps.Pause(ctx, name, image, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("publish disk image: %w", err)
	}
	return hdr, nil
}

func snapshotMetadata(rec *record, now time.Time) map[string]string {
	md := map[string]string{
		metaKind:       kindDisk,
		metaDriver:     "container",
		metaCapsuleID:  rec.ID,
		metaTemplateID: rec.Spec.Template,
		metaVCPUs:      strconv.Itoa(rec.Spec.VCPUs),
		metaMemoryMB:   strconv.Itoa(rec.Spec.MemoryMB),
		metaDiskSizeMB: strconv.Itoa(rec.Spec.DiskSizeMB),
		metaInternet:   strconv.FormatBool(rec.Spec.AllowInternet),
		metaCreatedAt:  now.Format(time.RFC3339Nano),
	}
	if rec.Spec.Network != nil {
		if b, err := json.Marshal(rec.Spec.Network); err == nil {
			md[metaNetwork] = string(b)
		}
	}
	return md
}

// storedBytes is what one header's own build added to the store.
func storedBytes(h *snapshot.Header) int64 {
	for _, b := range h.Builds {
		if b.ID == h.BuildID {
			return b.DataLen
		}
	}
	return 0
}

// remount brings a stopped capsule's disk and overlay back after a failed
// snapshot, so it can be started again.
func (d *Driver) remount(rec *record, lower string) {
	if err := d.mountRootfs(context.Background(), rec, lower, ""); err != nil {
		d.log.Error("remount after a failed snapshot", "id", rec.ID, "err", err)
	}
}

// dropSnapshot deletes a snapshot header the driver no longer needs (a
// superseded one, or a destroyed capsule's) and frees at once the data of
// its builds nothing else references — memory images are hundreds of MB
// and must not wait for the age-bounded GC — then collects older garbage
// (best effort: a failure leaves garbage for a later GC, never a broken
// snapshot). The caller holds the capsule's lock, so no publish diffs
// against the dropped header meanwhile.
func (d *Driver) dropSnapshot(ctx context.Context, name string) {
	ctx = context.WithoutCancel(ctx)
	// A disk image's memory companion (if any) goes first, so a memory
	// image never outlives the disk header that names it unnoticed.
	if !strings.HasSuffix(name, memSuffix) {
		if st, err := d.snaps.DeleteAndFree(ctx, name+memSuffix); err != nil {
			d.log.Warn("delete superseded memory image", "snapshot", name+memSuffix, "err", err)
		} else if len(st.Deleted) > 0 {
			d.log.Info("memory image freed", "snapshot", name+memSuffix, "deleted_bytes", st.DeletedBytes)
		}
	}
	if st, err := d.snaps.DeleteAndFree(ctx, name); err != nil {
		d.log.Warn("delete superseded snapshot", "snapshot", name, "err", err)
		return
	} else if len(st.Deleted) > 0 {
		d.log.Info("snapshot freed", "snapshot", name, "deleted_bytes", st.DeletedBytes)
	}
	if d.cfg.SnapshotGCMinAge < 0 {
		return
	}
	st, err := d.snaps.GC(ctx, d.cfg.SnapshotGCMinAge)
	if err != nil {
		d.log.Warn("snapshot gc", "err", err)
		return
	}
	if len(st.Deleted) > 0 {
		d.log.Info("snapshot gc", "deleted_builds", len(st.Deleted), "deleted_bytes", st.DeletedBytes)
	}
}

// Adopt implements runtime.Mover: a capsule another host snapshotted to
// the shared store becomes a snapshotted capsule here (state.json only;
// Restore materialises it). The snapshot's header must be readable.
func (d *Driver) Adopt(ctx context.Context, snap runtime.SnapshotInfo) (runtime.Info, error) {
	if len(snap.Keys) == 0 || snap.CapsuleID == "" || snap.ID == "" {
		return runtime.Info{}, fmt.Errorf("%w: empty snapshot", runtime.ErrInvalidSpec)
	}
	r, err := d.snaps.Open(ctx, snap.Keys[0])
	if err != nil {
		return runtime.Info{}, fmt.Errorf("adopt capsule %s: open snapshot %s: %w", snap.CapsuleID, snap.Keys[0], err)
	}
	_ = r.Close()
	spec := snap.Spec
	spec.ID = snap.CapsuleID
	c := &capsule{}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	c.rec = newRecord(spec, false)
	c.rec.State = runtime.StateSnapshotted
	c.rec.Snapshot = &snap
	if err := os.MkdirAll(filepath.Join(d.capsDir, c.rec.Key), 0o700); err != nil {
		d.unreserve(spec.ID, c)
		return runtime.Info{}, fmt.Errorf("container: %w", err)
	}
	if err := d.save(&c.rec); err != nil {
		_ = os.RemoveAll(filepath.Join(d.capsDir, c.rec.Key))
		d.unreserve(spec.ID, c)
		return runtime.Info{}, err
	}
	return d.info(&c.rec), nil
}

// Release implements runtime.Mover: a capsule that another host owns (a
// snapshotted one restored there from the shared store, or a copy whose
// move failed) is removed from this host — processes, mounts, network,
// state directory — while its snapshot objects stay (Destroy would delete
// them, breaking the capsule's other home).
func (d *Driver) Release(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	d.destroyLocked(ctx, c)
	d.stopLXCFSIfIdle()
	d.releaseRunscRoot()
	return nil
}

// Restore implements runtime.Snapshotter: it materialises the snapshot's
// disk image as a sparse file (zero blocks stay holes), attaches and mounts
// it, rebuilds the overlay and the network, and then, when the snapshot has
// a memory image and CRIU works here, restores the processes with `runc
// restore` (MemoryKept=true); otherwise, or if that fails (restoreMemory
// leaves nothing of the attempt), it boots envd again under the capsule's
// original ID (MemoryKept=false, files intact). The snapshot stays in the
// store as the parent the next Snapshot of this capsule diffs against. A
// failed or cancelled restore leaves no host object behind; the cleanup
// does not depend on ctx.
func (d *Driver) Restore(ctx context.Context, snap runtime.SnapshotInfo) (runtime.Info, error) {
	if len(snap.Keys) == 0 || snap.CapsuleID == "" || snap.ID == "" {
		return runtime.Info{}, fmt.Errorf("%w: empty snapshot", runtime.ErrInvalidSpec)
	}
	name := snap.Keys[0]
	r, err := d.snaps.Open(ctx, name)
	if err != nil {
		return runtime.Info{}, fmt.Errorf("restore capsule %s: open snapshot %s: %w", snap.CapsuleID, name, err)
	}
	defer r.Close()
	spec, err := restoreSpec(snap, r)
	if err != nil {
		return runtime.Info{}, err
	}
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	// The image decides the disk size (normalize may have raised it).
	spec.DiskSizeMB = int(r.Size() >> 20)
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
	memName := memoryImageOf(snap, r)
	var (
		images   string
		criuKeys []string
	)
	// The unpacked memory image may be on the scratch tmpfs: it goes
	// whatever happens (restoreMemory removes it as well).
	defer func() {
		if images != "" {
			_ = os.RemoveAll(images)
		}
	}()
	materialise := func(image string) error {
		if err := r.WriteFile(ctx, image); err != nil {
			return fmt.Errorf("container: materialise snapshot %s: %w", name, err)
		}
		if memName == "" || !d.criu {
			return nil
		}
		var merr error
		images, criuKeys, merr = d.fetchMemory(ctx, filepath.Dir(image), memName, spec.ID)
		if merr != nil {
			d.log.Warn("memory image unusable, booting with files only", "id", spec.ID, "err", merr)
		}
		return nil
	}
	c.rec = newRecord(spec, false)
	// The snapshot becomes the capsule's parent (which a destroy
	// deletes) only once the restore has succeeded: a restore killed
	// midway leaves a record whose cleanup must not delete a snapshot
	// that is still the capsule's only copy — or, after a move, still
	// another host's.
	s := d.createSteps(OpRestore, &c.rec, tmpl, materialise)
	s.Append(
		runtime.Step{
			Name: "memory",
			// A failed memory restore leaves nothing running
			// (restoreMemory): the capsule boots in the next step.
			Do: func(ctx context.Context) error {
				if images == "" {
					return nil
				}
				start := time.Now()
				if merr := d.restoreMemory(ctx, &c.rec, images, criuKeys); merr != nil {
					d.log.Warn("memory restore failed, booting with files only", "id", spec.ID, "err", merr)
					return nil
				}
				c.rec.Memory = true
				d.log.Info("capsule memory restored", "id", spec.ID, "took", time.Since(start))
				return nil
			},
			Undo: func(ctx context.Context) error { return d.removeContainer(ctx, &c.rec) },
		},
		runtime.Step{
			Name: "start",
			Do: func(ctx context.Context) error {
				if c.rec.Memory {
					return nil
				}
				return d.start(ctx, &c.rec)
			},
			Undo: func(ctx context.Context) error { return d.removeContainer(ctx, &c.rec) },
		},
		runtime.Step{Name: "save", Do: func(context.Context) error {
			c.rec.Parent = name
			if err := d.save(&c.rec); err != nil {
				d.log.Warn("save restored capsule", "id", spec.ID, "err", err)
			}
			return nil
		}},
	)
	if err := d.runSteps(ctx, s); err != nil {
		d.unreserve(spec.ID, c)
		d.log.Warn("restore failed; the capsule's host objects are removed", "id", spec.ID, "err", err)
		return runtime.Info{}, fmt.Errorf("restore capsule %s: %w", spec.ID, err)
	}
	return d.info(&c.rec), nil
}

// restoreSpec checks that snap and the image belong together and fills the
// spec fields a bare SnapshotInfo (e.g. one carried to another host with
// only its ID and capsule ID) leaves empty from the header metadata.
func restoreSpec(snap runtime.SnapshotInfo, r *snapshot.Reader) (runtime.Spec, error) {
	md := r.Metadata()
	if md[metaKind] != kindDisk {
		return runtime.Spec{}, fmt.Errorf("%w: snapshot %s is not a container disk image (kind %q)", runtime.ErrInvalidSpec, snap.ID, md[metaKind])
	}
	if md[metaCapsuleID] != snap.CapsuleID {
		return runtime.Spec{}, fmt.Errorf("%w: snapshot %s belongs to capsule %q, not %q", runtime.ErrInvalidSpec, snap.ID, md[metaCapsuleID], snap.CapsuleID)
	}
	if r.Size()%(1<<20) != 0 {
		return runtime.Spec{}, fmt.Errorf("%w: snapshot %s: image size %d is not whole MiB", runtime.ErrInvalidSpec, snap.ID, r.Size())
	}
	spec := snap.Spec
	spec.ID = snap.CapsuleID
	if snap.Template != "" && spec.Template == "" {
		spec.Template = snap.Template
	}
	if spec.Template == "" {
		spec.Template = md[metaTemplateID]
	}
	if spec.Template != md[metaTemplateID] {
		return runtime.Spec{}, fmt.Errorf("%w: snapshot %s was taken from template %q, not %q", runtime.ErrInvalidSpec, snap.ID, md[metaTemplateID], spec.Template)
	}
	atoi := func(k string) int { n, _ := strconv.Atoi(md[k]); return n }
	if spec.VCPUs == 0 {
		spec.VCPUs = atoi(metaVCPUs)
	}
	if spec.MemoryMB == 0 {
		spec.MemoryMB = atoi(metaMemoryMB)
	}
	if snap.Spec.Template == "" && snap.Spec.VCPUs == 0 {
		// A bare info: the network policy comes from the image too.
		spec.AllowInternet, _ = strconv.ParseBool(md[metaInternet])
		if s := md[metaNetwork]; s != "" {
			var p runtime.NetworkPolicy
			if err := json.Unmarshal([]byte(s), &p); err != nil {
				return runtime.Spec{}, fmt.Errorf("%w: snapshot %s: network policy: %w", runtime.ErrInvalidSpec, snap.ID, err)
			}
			spec.Network = &p
		}
	}
	spec.Labels = maps.Clone(spec.Labels)
	return spec, nil
}

// dropParent forgets the snapshot a destroyed capsule was restored from or
// paused into: the capsule is gone, so is its disk history.
func (d *Driver) dropParent(ctx context.Context, rec *record) {
	switch {
	case rec.State == runtime.StateSnapshotted && rec.Snapshot != nil && len(rec.Snapshot.Keys) > 0:
		d.dropSnapshot(ctx, rec.Snapshot.Keys[0])
	case rec.Parent != "":
		d.dropSnapshot(ctx, rec.Parent)
	}
}
