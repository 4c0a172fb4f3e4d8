package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

var _ runtime.MemoryTemplater = (*Driver)(nil)

// memTemplateKeys is the metadata key of a memory template archive holding
// the CRIU external-file keys of envd's stdout/stderr.
const memTemplateKeys = "criu_inherit"

// MemoryTemplates implements runtime.MemoryTemplater: on when memory
// snapshots are (a CRIU that passed `criu check`; with user namespaces,
// the patched one scripts/criu.sh builds).
func (d *Driver) MemoryTemplates() (bool, string) {
	if d.criu {
		return true, ""
	}
	if d.criuOff != "" {
		return false, d.criuOff
	}
	return false, "memory snapshots are off on this host"
}

// ExportMemory implements runtime.MemoryTemplater: `runc checkpoint
// --leave-running` dumps the running capsule's processes (CRIU freezes them
// for the dump and thaws them after), and the image directory is archived
// to dst. The capsule keeps running under the same runc container.
func (d *Driver) ExportMemory(ctx context.Context, id, dst string) (map[string]string, error) {
	if !d.criu {
		_, why := d.MemoryTemplates()
		return nil, fmt.Errorf("export memory of capsule %s: %s: %w", id, why, runtime.ErrNotSupported)
	}
	c, err := d.get(id)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	rec := &c.rec
	if rec.State != runtime.StateRunning || !d.alive(rec) {
		return nil, fmt.Errorf("export memory of capsule %s in state %s: %w", id, rec.State, runtime.ErrInvalidState)
	}
	p := d.paths(rec.Key)
	images := filepath.Join(p.Dir, "tmpl-"+criuImagesDir)
	work := filepath.Join(p.Dir, "tmpl-"+criuWorkDir)
	defer os.RemoveAll(images)
	defer os.RemoveAll(work)
	for _, dir := range []string{images, work} {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("container: %w", err)
		}
	}
	keys, err := hostFileKeys(rec.PID)
	if err != nil {
		return nil, err
	}
	conf := append([]string(nil), baseCRIUConf...)
	for _, k := range keys {
		conf = append(conf, "external "+k)
	}
	if err := os.MkdirAll(images, 0o700); err != nil {
		return nil, fmt.Errorf("container: %w", err)
	}
	start := time.Now()
	if err := d.runcCRIU(ctx, conf, work, nil, "checkpoint", "--leave-running", "--image-path", images, "--work-path", work, rec.Key); err != nil {
		return nil, fmt.Errorf("export memory of capsule %s: %w", id, err)
	}
	// criu's network lock is lifted when the dumped tasks resume; a dump
	// interrupted in between would leave the capsule's traffic dropped.
	if err := unlockNetwork(context.WithoutCancel(ctx), rec.Net.Netns); err != nil {
		d.log.Warn("remove criu network lock after a memory export", "id", id, "err", err)
	}
	if err := tarDir(images, dst); err != nil {
		return nil, err
	}
	d.log.Info("capsule memory exported for a template", "id", id, "bytes", imagesSize(images), "took", time.Since(start))
	return map[string]string{memTemplateKeys: strings.Join(keys, ",")}, nil
}

// CreateFromMemory implements runtime.MemoryTemplater: the capsule is made
// as Create makes it (dir, network, rootfs over spec's template, etc,
// bundle, state) and its processes are then restored from the archive with
// `runc restore` under the new capsule's key, cgroup and network namespace
// (established TCP connections of the dump are closed: tcp-close). A failed
// restore undoes every step, leaving nothing.
func (d *Driver) CreateFromMemory(ctx context.Context, spec runtime.Spec, archive string, md map[string]string) (runtime.Info, error) {
	if !d.criu {
		_, why := d.MemoryTemplates()
		return runtime.Info{}, fmt.Errorf("create capsule %s from memory: %s: %w", spec.ID, why, runtime.ErrNotSupported)
	}
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	c := &capsule{}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	c.rec = newRecord(spec, false)
	s := d.createSteps(OpCreate, &c.rec, tmpl, nil)
	s.Append(d.memorySteps(&c.rec, archive, md)...)
	s.Append(runtime.Step{Name: "save", Do: func(context.Context) error { return d.save(&c.rec) }})
	if err := d.runSteps(ctx, s); err != nil {
		d.unreserve(spec.ID, c)
		return runtime.Info{}, fmt.Errorf("create capsule %s from memory: %w", spec.ID, err)
	}
	return d.info(&c.rec), nil
}

// memorySteps restore a built capsule's processes from a memory template's
// archive (instead of starting envd): the CRIU images are unpacked into the
// capsule's directory and `runc restore`d under its key, cgroup and netns.
// Used by CreateFromMemory and by warm pools of memory templates.
func (d *Driver) memorySteps(rec *record, archive string, md map[string]string) []runtime.Step {
	var keys []string
	if s := md[memTemplateKeys]; s != "" {
		keys = strings.Split(s, ",")
	}
	images := filepath.Join(d.paths(rec.Key).Dir, criuImagesDir)
	return []runtime.Step{
		{
			Name: "memory-images",
			Do:   func(context.Context) error { return untarDir(archive, images) },
			Undo: func(context.Context) error { return os.RemoveAll(images) },
		},
		{
			Name: "memory",
			Do: func(ctx context.Context) error {
				if err := d.restoreMemory(ctx, rec, images, keys); err != nil {
					return fmt.Errorf("restore template memory: %w", err)
				}
				rec.Memory = true
				return nil
			},
			Undo: func(ctx context.Context) error { return d.removeContainer(ctx, rec) },
		},
	}
}
