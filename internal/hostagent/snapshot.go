package hostagent

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// snapshotToTemplate turns a running capsule's filesystem into a new
// template. The capsule is quiesced and frozen (when the driver can pause)
// so the copy is consistent, the driver archives its root
// (runtime.TemplateExporter), the archive is imported with the template
// store, and the capsule is thawed and re-inited. Drivers without that
// capability are not supported.
func (a *Agent) snapshotToTemplate(ctx context.Context, id, name string) (template.Template, error) {
	if a.cfg.Templates == nil {
		return template.Template{}, fmt.Errorf("create snapshot: no template store configured: %w", runtime.ErrNotSupported)
	}
	if !template.ValidName(name) {
		return template.Template{}, fmt.Errorf("%w: template name %q: want letters, digits, '_', '.', '-'", runtime.ErrInvalidSpec, name)
	}
	if _, err := a.cfg.Templates.Get(name); err == nil {
		return template.Template{}, fmt.Errorf("template %q: %w", name, runtime.ErrExists)
	}
	c, err := a.lookup(id)
	if err != nil {
		return template.Template{}, err
	}
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, cl := c.snapshot()
	if c.gone {
		return template.Template{}, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	if rec.Phase != phaseRunning {
		return template.Template{}, fmt.Errorf("capsule %s is %s: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	exporter, ok := a.driver.(runtime.TemplateExporter)
	if !ok {
		return template.Template{}, fmt.Errorf("create snapshot: the %s driver cannot export a capsule's filesystem: %w", a.driver.Name(), runtime.ErrNotSupported)
	}
	pauser, canPause := a.driver.(runtime.Pauser)
	if canPause {
		if err := a.quiesce(ctx, c, cl); err != nil {
			return template.Template{}, err
		}
		if err := pauser.Pause(ctx, id); err != nil {
			a.unquiesce(c)
			return template.Template{}, fmt.Errorf("freeze capsule %s: %w", id, err)
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
	}
	tmp, err := os.CreateTemp(a.cfg.Templates.Dir, ".snapshot-"+id+"-*.tar")
	if err != nil {
		return template.Template{}, fmt.Errorf("create snapshot: %w", err)
	}
	_ = tmp.Close()
	defer func() { _ = os.Remove(tmp.Name()) }()
	start := time.Now()
	if err := exporter.ExportTemplate(ctx, id, tmp.Name()); err != nil {
		return template.Template{}, fmt.Errorf("create snapshot: %w", err)
	}
	t, err := a.cfg.Templates.ImportTarball(ctx, name, tmp.Name())
	if err != nil {
		return template.Template{}, fmt.Errorf("create snapshot: import: %w", err)
	}
	a.log.Info("capsule snapshotted to template", "capsule_id", id, "template", name, "size_bytes", t.SizeBytes, "took", time.Since(start))
	return t, nil
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
