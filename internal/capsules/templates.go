package capsules

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// HostTemplateName is the name a template has in a host's template store:
// public templates (seeded or built for the platform team) by name, every
// other template by its id, so that teams' templates never collide.
func HostTemplateName(t store.Template) string {
	if t.Public && t.Checksum == "" && !strings.Contains(t.Name, ":") {
		return t.Name
	}
	return t.ID
}

// PinnedHost is the only host a capsule of template t may be placed on:
// the host that made it when it lives there only (no shared-store
// checksum), else none — any host fetches it from the shared template
// store.
func PinnedHost(t store.Template) string {
	if t.Checksum != "" {
		return ""
	}
	return t.HostID
}

// NormalizeTemplateName turns a template reference "name" or "name:tag"
// into the name a template row has: the default tag ":latest" is dropped,
// so "py" and "py:latest" are one template and "py:v2" another.
func NormalizeTemplateName(name string) string {
	return strings.TrimSuffix(name, ":"+LatestTag)
}

// LatestTag is the tag a template name without one has.
const LatestTag = "latest"

// DeleteTemplateFiles removes template t's files from the host that holds
// it (t.HostID; templates without one live on every host from `wrenn
// template prepare` and are left alone) and, for a template in the shared
// template store, its archive there — through another online host when
// the one that made it is gone or unavailable. A host that is unknown,
// unavailable or already without the template is not an error for the
// host's copy; the control plane's reconciler removes a team template the
// store no longer knows from every host once it answers again.
func DeleteTemplateFiles(ctx context.Context, st store.Store, ag Agents, t store.Template) error {
	if t.HostID == "" && t.Checksum == "" {
		return nil
	}
	del := func(h store.Host) error {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, err := ag.Client(h).DeleteTemplate(dctx, connect.NewRequest(&pb.DeleteTemplateRequest{Template: HostTemplateName(t), Shared: t.Checksum != ""}))
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			return fmt.Errorf("delete template %s on host %s: %w", HostTemplateName(t), h.ID, err)
		}
		return nil
	}
	var originErr error
	if t.HostID != "" {
		h, err := st.GetHost(ctx, t.HostID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			originErr = fmt.Errorf("host %s is gone", t.HostID)
		case err != nil:
			return err
		case h.Status == store.HostUnavailable:
			originErr = fmt.Errorf("host %s is unavailable", h.ID)
		default:
			originErr = del(h)
			// A copy in use there answers FailedPrecondition after the
			// shared archive is gone: nothing more to do.
			if originErr == nil || t.Checksum != "" && connect.CodeOf(originErr) == connect.CodeFailedPrecondition {
				return originErr
			}
		}
		if t.Checksum == "" {
			return originErr
		}
	}
	// The shared archive, through any other online host.
	hosts, err := st.ListHosts(ctx)
	if err != nil {
		return errors.Join(originErr, err)
	}
	for _, h := range hosts {
		if h.ID == t.HostID || h.Status != store.HostOnline {
			continue
		}
		if err := del(h); err == nil || connect.CodeOf(err) == connect.CodeFailedPrecondition {
			return originErr
		}
	}
	return errors.Join(originErr, fmt.Errorf("no online host could delete template %s from the shared store", t.ID))
}

// DeleteTemplate deletes a template row (any team's: the caller has
// checked the right to) and then its files on its host; a host that cannot
// do it now is logged, and the reconciler finishes the job.
func (s *Service) DeleteTemplate(ctx context.Context, t store.Template) error {
	ctx = context.WithoutCancel(ctx)
	err := s.cfg.Store.DeleteTemplate(ctx, t.TeamID, t.ID)
	if errors.Is(err, store.ErrConflict) {
		return &Error{Kind: KindConflict, Message: fmt.Sprintf("template %s is still in use", t.Name), Err: err}
	}
	if err != nil {
		return err
	}
	if herr := DeleteTemplateFiles(ctx, s.cfg.Store, s.cfg.Agents, t); herr != nil {
		s.log.Warn("delete template files on its host", "template_id", t.ID, "err", herr)
	}
	return nil
}
