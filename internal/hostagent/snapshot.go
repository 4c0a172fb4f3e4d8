package hostagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// snapshotResult is what snapshotToTemplate made.
type snapshotResult struct {
	Template template.Template
	// Checksum of the archive in the shared template store ("" without one).
	Checksum string
	// Memory: the template keeps the processes' memory; MemoryReason says
	// why not when it was asked for.
	Memory       bool
	MemoryReason string
}

// memoryTokenKey is the memory-template metadata key holding the source
// capsule's envd access token: the restored envd still expects it, and the
// first /init of a capsule made from the template replaces it.
const memoryTokenKey = "wrenn.envd_token"

// snapshotToTemplate turns a running capsule's filesystem (and, with
// memory, its processes) into a new template. The capsule is quiesced;
// with memory, the driver checkpoints the processes and leaves them running
// (runtime.MemoryTemplater); it is then frozen (when the driver can pause)
// so the file copy is consistent, the driver archives its root
// (runtime.TemplateExporter), the archive is imported into the host's
// template store and published to the shared template store (when there is
// one), and the capsule is thawed and re-inited. Drivers without the export
// capability are not supported; a memory checkpoint that fails or cannot be
// done here keeps files only, with the reason.
func (a *Agent) snapshotToTemplate(ctx context.Context, id, name string, memory bool, rc template.RunConfig) (snapshotResult, error) {
	var res snapshotResult
	if a.cfg.Templates == nil {
		return res, fmt.Errorf("create snapshot: no template store configured: %w", runtime.ErrNotSupported)
	}
	if !template.ValidName(name) {
		return res, fmt.Errorf("%w: template name %q: want letters, digits, '_', '.', '-'", runtime.ErrInvalidSpec, name)
	}
	if _, err := a.cfg.Templates.Get(name); err == nil {
		return res, fmt.Errorf("template %q: %w", name, runtime.ErrExists)
	}
	c, err := a.lookup(id)
	if err != nil {
		return res, err
	}
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, cl := c.snapshot()
	if c.gone {
		return res, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	if rec.Phase != phaseRunning {
		return res, fmt.Errorf("capsule %s is %s: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	// What the capsule's own template starts with carries over (a build
	// FROM a template, a snapshot of a capsule of it) unless rc says else.
	if base, err := a.cfg.Templates.RunConfigOf(rec.Template); err == nil {
		rc = rc.Inherit(base)
	} else {
		a.log.Warn("run config of the capsule's template unreadable; not inherited", "capsule_id", id, "template", rec.Template, "err", err)
	}
	exporter, ok := a.driver.(runtime.TemplateExporter)
	if !ok {
		return res, fmt.Errorf("create snapshot: the %s driver cannot export a capsule's filesystem: %w", a.driver.Name(), runtime.ErrNotSupported)
	}
	mt, canMem := a.driver.(runtime.MemoryTemplater)
	if memory && !canMem {
		res.MemoryReason = "the " + a.driver.Name() + " driver cannot keep memory in a template"
	} else if memory {
		if ok, why := mt.MemoryTemplates(); !ok {
			res.MemoryReason = why
			canMem = false
		}
	}
	pauser, canPause := a.driver.(runtime.Pauser)
	quiesced := false
	if canPause || (memory && canMem) {
		if err := a.quiesce(ctx, c, cl); err != nil {
			return res, err
		}
		quiesced = true
	}
	work, err := os.MkdirTemp(a.cfg.Templates.Dir, ".snapshot-"+id+"-")
	if err != nil {
		if quiesced {
			a.unquiesce(c)
		}
		return res, fmt.Errorf("create snapshot: %w", err)
	}
	defer func() { _ = os.RemoveAll(work) }()
	var mem *template.Memory
	if memory && canMem {
		start := time.Now()
		arch := filepath.Join(work, "memory.tar")
		md, merr := mt.ExportMemory(ctx, id, arch)
		if merr != nil {
			res.MemoryReason = merr.Error()
			a.log.Warn("memory checkpoint for a template failed; keeping files only", "capsule_id", id, "template", name, "err", merr)
		} else {
			md[memoryTokenKey] = rec.AccessToken
			mem = &template.Memory{Archive: arch, Metadata: md}
			a.log.Info("capsule memory checkpointed for a template", "capsule_id", id, "template", name, "took", time.Since(start))
		}
	}
	if canPause {
		if err := pauser.Pause(ctx, id); err != nil {
			a.unquiesce(c)
			return res, fmt.Errorf("freeze capsule %s: %w", id, err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ResumeTimeout)
			defer cancel()
			err := pauser.Resume(rctx, id)
			if err == nil {
				err = a.readyAndInit(rctx, c, true)
			}
			if err != nil {
				a.log.Error("thaw after snapshot failed; destroying the capsule", "capsule_id", id, "err", err)
				a.discard(c, true)
				return
			}
			a.startSampler(c)
		}()
	} else if quiesced {
		defer a.unquiesce(c)
	}
	tarball := filepath.Join(work, "rootfs.tar")
	start := time.Now()
	if err := exporter.ExportTemplate(ctx, id, tarball); err != nil {
		return res, fmt.Errorf("create snapshot: %w", err)
	}
	t, err := a.cfg.Templates.ImportWithMemory(ctx, name, tarball, mem)
	if err != nil {
		return res, fmt.Errorf("create snapshot: import: %w", err)
	}
	// The build's START/READY and defaults travel with the template: here
	// in run.json, in the shared store in the archive's metadata.
	if err := a.setRunConfig(a.cfg.Templates, name, rc); err != nil {
		return res, fmt.Errorf("create snapshot: %w", err)
	}
	if sh := a.cfg.SharedTemplates; sh != nil {
		extra, err := template.RunConfigMetadata(rc)
		if err != nil {
			_ = a.cfg.Templates.Delete(name)
			return res, fmt.Errorf("create snapshot: %w", err)
		}
		sum, err := sh.PublishWithMemory(ctx, name, tarball, mem, extra)
		if err != nil {
			// Unpublished, the template must not be recorded: remove it here too.
			_ = a.cfg.Templates.Delete(name)
			return res, fmt.Errorf("create snapshot: %w", err)
		}
		res.Checksum = sum
	}
	res.Template, res.Memory = t, mem != nil
	a.log.Info("capsule snapshotted to template", "capsule_id", id, "template", name, "size_bytes", t.SizeBytes,
		"memory", res.Memory, "shared", res.Checksum != "", "took", time.Since(start))
	return res, nil
}

// snapshotGC sweeps the driver's snapshot store at start and then every
// SnapshotGCInterval: build data that no header references and that is
// older than SnapshotGCMinAge is deleted (snapshot.Manager.GC, a mark and
// sweep that refuses to delete anything if a header is unreadable). Drivers
// also collect when they supersede a snapshot, but data still younger than
// the minimum age then survives that collection; this loop is what
// eventually frees it, and what cleans up after a crash between a data
// upload and its header. Temp files of interrupted writes to a local
// store older than the same age are removed too.
func (a *Agent) snapshotGC(ctx context.Context, c runtime.SnapshotCollector) {
	t := time.NewTicker(a.cfg.SnapshotGCInterval)
	defer t.Stop()
	for {
		st, err := c.CollectSnapshots(ctx, a.cfg.SnapshotGCMinAge)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			a.log.Warn("snapshot gc", "err", err)
		case st.Deleted > 0 || st.TempRemoved > 0:
			a.log.Info("snapshot gc", "deleted_builds", st.Deleted, "deleted_bytes", st.DeletedBytes,
				"headers", st.Headers, "live_builds", st.LiveBuilds, "temp_removed", st.TempRemoved)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
