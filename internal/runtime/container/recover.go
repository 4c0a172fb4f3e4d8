package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Recover implements runtime.Driver. For every capsule directory it checks
// state.json against the host: a capsule whose rootfs, network and (for a
// running or paused one) runc container are intact is adopted; anything else
// (half-made capsules from a crash mid-create, warm-pool capsules, broken
// ones) is destroyed. Then it sweeps host objects that belong to no adopted
// capsule: runc containers, cgroups, mounts, loop devices (autoclear, freed
// with their mounts), network namespaces, veths and nft rules.
func (d *Driver) Recover(ctx context.Context) ([]runtime.Info, error) {
	entries, err := os.ReadDir(d.capsDir)
	if err != nil {
		return nil, fmt.Errorf("container: recover: %w", err)
	}
	kept := map[string]bool{}
	var adopted []runtime.Info
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		key := e.Name()
		rec, ok := d.adoptable(ctx, key)
		if !ok {
			d.log.Info("recover: cleaning up capsule", "key", key, "id", rec.ID)
			if rec.Key == "" {
				rec.Key = key
			}
			d.release(ctx, &rec)
			_ = os.RemoveAll(filepath.Join(d.capsDir, key))
			continue
		}
		c := &capsule{rec: rec}
		if rec.State != runtime.StateSnapshotted {
			d.holdIDBase(rec.IDBase)
		}
		if err := d.reserve(rec.ID, c); err != nil {
			d.log.Warn("recover: duplicate capsule id", "id", rec.ID, "key", key)
			d.release(ctx, &rec)
			_ = os.RemoveAll(filepath.Join(d.capsDir, key))
			continue
		}
		if rec.State != runtime.StateSnapshotted {
			if err := d.net.Adopt(rec.Net); err != nil {
				d.unreserve(rec.ID, c)
				d.release(ctx, &rec)
				_ = os.RemoveAll(filepath.Join(d.capsDir, key))
				continue
			}
			d.net.Label(rec.Key, rec.ID)
			// Rebuild the policy chain, rate limits and DNS forwarder
			// (the forwarder and the policy live in the agent's memory).
			if err := d.net.SetPolicy(rec.Net, rec.Spec.AllowInternet && !rec.Pool, rec.Spec.Network); err != nil {
				d.log.Warn("recover: network policy", "id", rec.ID, "err", err)
			}
		}
		_ = d.save(&c.rec)
		kept[key] = true
		adopted = append(adopted, d.info(&c.rec))
		d.log.Info("recover: adopted capsule", "id", rec.ID, "key", key, "state", rec.State)
	}
	err = d.sweep(ctx, func(k string) bool { return kept[k] })
	d.startSpares() // after the sweep, which would take a spare's pieces
	return adopted, err
}

// adoptable reads a capsule's record and checks its resources.
func (d *Driver) adoptable(ctx context.Context, key string) (record, bool) {
	var rec record
	b, err := os.ReadFile(filepath.Join(d.capsDir, key, "state.json"))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.Key != key || rec.Pool {
		return rec, false
	}
	if rec.State == runtime.StateSnapshotted {
		if rec.Snapshot == nil {
			return rec, false
		}
		if rec.Releasing {
			// A crash after a pause to disk's commit: finish it.
			if err := d.finishSnapshot(ctx, &rec); err != nil {
				d.log.Warn("recover: finish a pause to disk", "id", rec.ID, "err", err)
			}
		}
		return rec, true
	}
	if rec.Publishing != "" {
		// A crash mid pause to disk, before its commit: what the store
		// received goes; the capsule stays (its disk is mounted again
		// below if the pause had unmounted it).
		d.log.Warn("recover: a pause to disk was interrupted; keeping the capsule", "id", rec.ID, "snapshot", rec.Publishing)
		d.dropSnapshot(ctx, rec.Publishing)
		rec.Publishing = ""
	}
	if _, err := os.Stat(rec.Net.Netns); err != nil {
		return rec, false
	}
	p := d.paths(key)
	mounts, err := rootfs.MountsUnder(p.Dir)
	if err != nil {
		return rec, false
	}
	if !slices.Contains(mounts, p.Root()) || !slices.Contains(mounts, p.Disk()) {
		return rec, d.remountAfterCrash(ctx, &rec)
	}
	st, err := d.state(ctx, key)
	if err != nil {
		return rec, false
	}
	switch rec.State {
	case runtime.StateRunning, runtime.StatePaused:
		switch st.Status {
		case "running":
			rec.State = runtime.StateRunning
		case "paused":
			rec.State = runtime.StatePaused
		default:
			// The init died while we were away: keep the capsule stopped.
			_ = d.runcDelete(ctx, key)
			rec.State = runtime.StateStopped
			rec.PID = 0
			return rec, true
		}
		rec.PID = st.PID
		return rec, true
	case runtime.StateCreated, runtime.StateStopped:
		if st.Status != "" {
			_ = d.runcDelete(ctx, key)
		}
		return rec, true
	}
	return rec, false
}

// remountAfterCrash keeps, stopped, a capsule whose disk a crash left
// unmounted: a pause to disk detaches the disk before it publishes it, so
// an agent killed then leaves the capsule's files only in its image.
// The image is mounted again, as after a failed pause; a capsule without
// an image (a create that never finished) is not kept.
func (d *Driver) remountAfterCrash(ctx context.Context, rec *record) bool {
	switch rec.State {
	case runtime.StateRunning, runtime.StatePaused, runtime.StateStopped:
	default:
		return false
	}
	p := d.paths(rec.Key)
	if _, err := os.Stat(p.Image()); err != nil {
		return false
	}
	tmpl, err := d.cfg.Templates.Get(rec.Spec.Template)
	if err != nil {
		d.log.Warn("recover: disk left unmounted; its template is gone", "id", rec.ID, "template", rec.Spec.Template, "err", err)
		return false
	}
	if err := d.runcDelete(ctx, rec.Key); err != nil {
		d.log.Warn("recover: disk left unmounted; its container remains", "id", rec.ID, "err", err)
		return false
	}
	_ = os.RemoveAll(filepath.Join(p.Dir, criuImagesDir))
	if err := rootfs.Unmount(p); err != nil {
		d.log.Warn("recover: disk left unmounted", "id", rec.ID, "err", err)
		return false
	}
	if err := d.mountRootfs(ctx, rec, tmpl.Rootfs, ""); err != nil {
		d.log.Warn("recover: mount a disk left unmounted", "id", rec.ID, "err", err)
		return false
	}
	d.log.Info("recover: mounted again the disk a crash left unmounted; the capsule is stopped", "id", rec.ID)
	rec.State, rec.PID = runtime.StateStopped, 0
	return true
}

// sweep removes every host object of a key keep rejects.
func (d *Driver) sweep(ctx context.Context, keep func(string) bool) error {
	var errs []error
	// runc containers.
	runtimeKeys := d.containerKeys(ctx)
	for _, key := range runtimeKeys {
		if !keep(key) {
			if err := d.runcDelete(ctx, key); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// cgroups under the parent.
	for _, dir := range d.cg.dirs(d.cfg.CgroupParent) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() && !keep(e.Name()) {
				if err := d.cg.remove(d.cgroupPath(e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// Mounts of capsules not kept (their directories are gone or going).
	mounts, err := rootfs.MountsUnder(d.capsDir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range mounts {
		rel, _ := filepath.Rel(d.capsDir, m)
		key, _, _ := strings.Cut(rel, string(filepath.Separator))
		if !keep(key) {
			if err := removeDir(d.paths(key)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Namespaces: every key that has a directory, a runc container or a
	// cgroup here (release removes the directory last, so a namespace
	// never outlives all three).
	var keys []string
	entries, _ := os.ReadDir(d.capsDir)
	for _, e := range entries {
		keys = append(keys, e.Name())
	}
	keys = append(keys, runtimeKeys...)
	if err := d.net.Sweep(keep, keys); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Leaks counts the host objects of this driver's capsules, for tests that
// check nothing is left behind. Processes counts tasks in the driver's
// cgroups plus host processes whose command line names its runc root.
type Leaks struct {
	Netns, Mounts, Loops, Cgroups, Rules, Containers, Processes int
}

// CountHostObjects counts the driver's objects on the host.
func (d *Driver) CountHostObjects() (Leaks, error) {
	var l Leaks
	ns, err := d.net.Namespaces()
	if err != nil {
		return l, err
	}
	l.Netns = len(ns)
	mounts, err := rootfs.MountsUnder(d.capsDir)
	if err != nil {
		return l, err
	}
	l.Mounts = len(mounts)
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range loops {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), d.capsDir+"/") {
			l.Loops++
		}
	}
	for _, dir := range d.cg.dirs(d.cfg.CgroupParent) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			l.Cgroups++
			if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "cgroup.procs")); err == nil {
				l.Processes += len(strings.Fields(string(b)))
			}
		}
	}
	if l.Rules, err = d.net.RuleCount(); err != nil {
		return l, err
	}
	l.Containers = len(d.containerKeys(context.Background()))
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), d.runcRoot) {
			l.Processes++
		}
	}
	return l, nil
}
