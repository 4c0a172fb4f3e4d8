package api

import (
	"net/http"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// actor describes the caller for the audit log.
func actor(p *principal) audit.Actor {
	if p == nil {
		return audit.Actor{Type: store.ActorSystem}
	}
	if p.KeyID != "" {
		return audit.Actor{Type: store.ActorAPIKey, ID: p.KeyID, Name: p.User.Email}
	}
	return audit.Actor{Type: store.ActorUser, ID: p.UserID, Name: p.User.Email}
}

// audit records a team action (no-op when no recorder is configured).
func (a *API) audit(r *http.Request, teamID, resourceType, resourceID, action string, err error, meta map[string]any) {
	if a.cfg.Audit == nil {
		return
	}
	a.cfg.Audit.Log(r.Context(), audit.Entry{
		TeamID: teamID, Actor: actor(caller(r.Context())), ResourceType: resourceType, ResourceID: resourceID,
		Action: action, Failed: err != nil, Metadata: meta,
	})
}

// auditAdmin records an admin-panel action under the platform team.
func (a *API) auditAdmin(r *http.Request, resourceType, resourceID, action string, meta map[string]any) {
	if a.cfg.Audit == nil {
		return
	}
	a.cfg.Audit.Admin(r.Context(), audit.Entry{
		Actor: actor(caller(r.Context())), ResourceType: resourceType, ResourceID: resourceID, Action: action, Metadata: meta,
	})
}
