package hostagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// trashPrefix names a template directory being removed: it is renamed
// first (so no new capsule can find it), then deleted. A crash in between
// leaves such a directory, removed at the next start.
const trashPrefix = ".deleting-"

func (s service) ListTemplates(_ context.Context, _ *connect.Request[pb.ListTemplatesRequest]) (*connect.Response[pb.ListTemplatesResponse], error) {
	if s.a.cfg.Templates == nil {
		return connect.NewResponse(&pb.ListTemplatesResponse{}), nil
	}
	ts, err := s.a.cfg.Templates.List()
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListTemplatesResponse{}
	for _, t := range ts {
		out.Templates = append(out.Templates, &pb.HostTemplate{Name: t.Name, SizeBytes: t.SizeBytes, CreatedAt: t.CreatedAt.Unix()})
	}
	return connect.NewResponse(out), nil
}

func (s service) DeleteTemplate(ctx context.Context, req *connect.Request[pb.DeleteTemplateRequest]) (*connect.Response[pb.DeleteTemplateResponse], error) {
	name := req.Msg.GetTemplate()
	err := s.a.deleteTemplate(name)
	// The shared archive goes even if this host's copy is still in use
	// (its capsules keep the copy; no new capsule can name the template).
	if req.Msg.GetShared() && s.a.cfg.SharedTemplates != nil && template.ValidName(name) {
		if serr := s.a.cfg.SharedTemplates.Delete(ctx, name); serr != nil {
			return nil, toConnect(fmt.Errorf("delete template %q from the shared store: %w", name, serr))
		}
		if errors.Is(err, runtime.ErrNoTemplate) {
			err = nil
		}
	}
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DeleteTemplateResponse{}), nil
}

// ensureTemplate makes sure this host has template name before a create,
// fetching it from the shared template store if it lacks it (once, however
// many creates ask at the same time; checked against checksum). Without a
// shared store a missing template is left for the driver to report.
func (a *Agent) ensureTemplate(ctx context.Context, name, checksum string) error {
	sh := a.cfg.SharedTemplates
	if sh == nil || a.cfg.Templates == nil {
		return nil
	}
	if _, err := a.cfg.Templates.Get(name); err == nil {
		return nil
	}
	if _, err := sh.Ensure(ctx, name, checksum); err != nil {
		if errors.Is(err, template.ErrNotFound) {
			return fmt.Errorf("%w: %w", runtime.ErrNoTemplate, err)
		}
		return err
	}
	return nil
}

// deleteTemplate removes template name from the host unless something
// uses it: a capsule the agent knows in any state (a paused or hibernated
// one needs its template to resume), a mount naming its directory (for
// example a warm-pool capsule's overlay), or being the agent's default.
func (a *Agent) deleteTemplate(name string) error {
	ts := a.cfg.Templates
	if ts == nil {
		return fmt.Errorf("delete template: no template store configured: %w", runtime.ErrNotSupported)
	}
	if !template.ValidName(name) {
		return fmt.Errorf("%w: template name %q", runtime.ErrInvalidSpec, name)
	}
	if name == a.cfg.DefaultTemplate {
		return fmt.Errorf("template %q is this host's default: %w", name, runtime.ErrInvalidState)
	}
	if a.cfg.WarmPools[name] != 0 {
		return fmt.Errorf("template %q has a warm pool on this host: %w", name, runtime.ErrInvalidState)
	}
	if _, err := ts.Get(name); err != nil {
		return fmt.Errorf("template %q: %w", name, runtime.ErrNoTemplate)
	}
	// A capsule destroyed just before still has its rootfs mounted until
	// its teardown ends (teardown.go).
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	err := a.waitTeardowns(wctx)
	cancel()
	if err != nil {
		return fmt.Errorf("template %q: capsule teardowns still running: %w", name, runtime.ErrInvalidState)
	}
	dir := filepath.Join(ts.Dir, name)
	trash, err := a.detachTemplate(name, dir)
	if err != nil {
		return err
	}
	// Outside the lock: a rootfs can take seconds to delete.
	if err := os.RemoveAll(trash); err != nil {
		a.log.Warn("remove deleted template's files; retried at the next start", "template", name, "err", err)
	}
	a.log.Info("template deleted", "template", name)
	return nil
}

// detachTemplate moves dir into a trash directory, returned, once no
// capsule and no mount uses it. Creates register their capsule under a.mu
// before touching the template, so holding it makes "unused" and the
// rename one step.
func (a *Agent) detachTemplate(name, dir string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, c := range a.caps {
		c.mu.Lock()
		tmpl := c.rec.Template
		c.mu.Unlock()
		if tmpl == name {
			return "", fmt.Errorf("template %q is used by capsule %s: %w", name, id, runtime.ErrInvalidState)
		}
	}
	if used, err := mountsMention(dir); err != nil {
		return "", fmt.Errorf("delete template %q: %w", name, err)
	} else if used {
		return "", fmt.Errorf("template %q is still mounted (a warm pool?): %w", name, runtime.ErrInvalidState)
	}
	trash, err := os.MkdirTemp(a.cfg.Templates.Dir, trashPrefix+name+"-")
	if err != nil {
		return "", fmt.Errorf("delete template %q: %w", name, err)
	}
	if err := os.Rename(dir, filepath.Join(trash, name)); err != nil {
		_ = os.Remove(trash)
		return "", fmt.Errorf("delete template %q: %w", name, err)
	}
	return trash, nil
}

// mountsMention reports whether any mount of this process's namespace
// names dir or a path under it (as source, mount point or option, e.g. an
// overlay's lowerdir).
func mountsMention(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for l := range bytes.SplitSeq(b, []byte{'\n'}) {
		for f := range strings.FieldsFuncSeq(string(l), func(r rune) bool { return r == ' ' || r == ',' || r == ':' || r == '=' }) {
			if f == dir || strings.HasPrefix(f, dir+"/") {
				return true, nil
			}
		}
	}
	return false, nil
}

// removeTemplateTrash deletes what an interrupted deleteTemplate left.
func (a *Agent) removeTemplateTrash() {
	if a.cfg.Templates == nil {
		return
	}
	ents, err := os.ReadDir(a.cfg.Templates.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), trashPrefix) {
			if err := os.RemoveAll(filepath.Join(a.cfg.Templates.Dir, e.Name())); err != nil {
				a.log.Warn("remove deleted template's files", "dir", e.Name(), "err", err)
			}
		}
	}
}
