package capsules

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// HostTemplateName is the name a template has in a host's template store:
// public templates (seeded or built for the platform team) by name, every
// other template by its id, so that teams' templates never collide.
func HostTemplateName(t store.Template) string {
	if t.Public {
		return t.Name
	}
	return t.ID
}

// DeleteTemplateFiles removes template t's files from the host that holds
// it (t.HostID; templates without one live on every host from `wrenn
// template build` and are left alone). A host that is unknown,
// unavailable or already without the template is not an error; the
// control plane's reconciler removes a team template the store no longer
// knows once its host answers again.
func DeleteTemplateFiles(ctx context.Context, st store.Store, ag Agents, t store.Template) error {
	if t.HostID == "" {
		return nil
	}
	h, err := st.GetHost(ctx, t.HostID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if h.Status == store.HostUnavailable {
		return fmt.Errorf("host %s is unavailable", h.ID)
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = ag.Client(h).DeleteTemplate(dctx, connect.NewRequest(&pb.DeleteTemplateRequest{Template: HostTemplateName(t)}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fmt.Errorf("delete template %s on host %s: %w", HostTemplateName(t), h.ID, err)
	}
	return nil
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
