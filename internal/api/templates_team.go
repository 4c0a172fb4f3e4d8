package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// deleteTemplate is DELETE /v1/templates/{templateID}: a team deletes one
// of its own templates (public ones are the admins'), refused with 409 while
// capsules use it; its files go from the host that made it and from the
// shared template store, other hosts' copies with the reconciler. Audited.
func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "templateID")
	if err := validID(store.PrefixTemplate, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	team := caller(r.Context()).TeamID
	t, err := a.cfg.Store.GetTemplate(r.Context(), team, id)
	if err == nil && t.TeamID != team {
		a.writeError(w, r, errorf(CodePermissionDenied, "template %q is public: only platform admins delete it", id))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	err = a.capsules.DeleteTemplate(r.Context(), t)
	a.audit(r, team, "template", t.ID, "delete", err, map[string]any{"name": t.Name})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
