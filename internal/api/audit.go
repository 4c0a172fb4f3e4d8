package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
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

// auditFilterFromQuery parses actor_id, resource_type, action, scope,
// from, to (RFC 3339), cursor and limit.
func auditFilterFromQuery(r *http.Request) (store.AuditFilter, error) {
	q := r.URL.Query()
	f := store.AuditFilter{
		ActorID: q.Get("actor_id"), ResourceType: q.Get("resource_type"), Action: q.Get("action"),
		Scope: store.AuditScope(q.Get("scope")), Cursor: q.Get("cursor"),
	}
	if f.Scope != "" && f.Scope != store.ScopeTeam && f.Scope != store.ScopeAdmin {
		return f, errorf(CodeInvalidArgument, "scope must be team or admin")
	}
	for name, dst := range map[string]*time.Time{"from": &f.From, "to": &f.To} {
		if s := q.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return f, errorf(CodeInvalidArgument, "%s must be an RFC 3339 time", name)
			}
			*dst = t
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return f, errorf(CodeInvalidArgument, "limit must be an integer from 1 to 1000")
		}
		f.Limit = n
	}
	return f, nil
}

// writeAuditPage lists audit entries for f as {"entries","next_cursor"}.
func (a *API) writeAuditPage(w http.ResponseWriter, r *http.Request, f store.AuditFilter) {
	entries, next, err := a.cfg.Store.ListAuditLogs(r.Context(), f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.AuditEntry, 0, len(entries))
	for _, e := range entries {
		j := wrennapi.AuditEntry{
			ID: e.ID, ActorType: string(e.ActorType), ActorID: e.ActorID, ActorName: e.ActorName,
			ResourceType: e.ResourceType, ResourceID: e.ResourceID, Action: e.Action, Status: string(e.Status),
			Scope: wrennapi.AuditEntryScope(e.Scope), CreatedAt: e.CreatedAt,
		}
		if len(e.Metadata) > 0 {
			_ = jsonUnmarshal(e.Metadata, &j.Metadata)
		}
		out = append(out, j)
	}
	writeJSON(w, http.StatusOK, wrennapi.AuditPage{Entries: out, NextCursor: next})
}

// teamAuditLogs answers GET /v1/audit-logs for the current team (team
// admins and owners).
func (a *API) teamAuditLogs(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "the audit log needs the admin role in the team"))
		return
	}
	f, err := auditFilterFromQuery(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	f.TeamID = p.TeamID
	if f.Scope == "" {
		f.Scope = store.ScopeTeam
	}
	a.writeAuditPage(w, r, f)
}
