package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/usage"
)

// Caller is the authenticated caller as other packages see it (for
// handlers mounted through Config.AdminRoutes).
type Caller struct {
	UserID   string
	Email    string
	TeamID   string
	Role     store.Role
	APIKeyID string
	IsAdmin  bool
}

// CallerFrom returns the caller of an authenticated request.
func CallerFrom(ctx context.Context) (Caller, bool) {
	p := caller(ctx)
	if p == nil {
		return Caller{}, false
	}
	return Caller{UserID: p.UserID, Email: p.User.Email, TeamID: p.TeamID, Role: p.Role, APIKeyID: p.KeyID, IsAdmin: p.IsAdmin}, true
}

// WriteError writes err the way every handler does (see Error).
func (a *API) WriteError(w http.ResponseWriter, r *http.Request, err error) { a.writeError(w, r, err) }

// DecodeJSON decodes a strict JSON body with the API's size limit.
func (a *API) DecodeJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	return decodeJSON(w, r, v, a.cfg.MaxBodyBytes, optional)
}

// capsuleUsage answers GET /v1/capsules/usage?from=YYYY-MM-DD&to=YYYY-MM-DD.
func (a *API) capsuleUsage(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Usage == nil {
		a.writeError(w, r, errorf(CodeNotImplemented, "usage metering is not enabled on this server"))
		return
	}
	q := r.URL.Query()
	from, to, err := usage.ParseRange(q.Get("from"), q.Get("to"))
	if errors.Is(err, usage.ErrBadRange) {
		a.writeError(w, r, &Error{Code: CodeInvalidArgument, Message: err.Error()})
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	rep, err := a.cfg.Usage.Query(r.Context(), caller(r.Context()).TeamID, from, to)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

type auditJSON struct {
	ID           int64          `json:"id"`
	ActorType    string         `json:"actor_type"`
	ActorID      string         `json:"actor_id"`
	ActorName    string         `json:"actor_name"`
	ResourceType string         `json:"resource_type"`
	ResourceID   string         `json:"resource_id"`
	Action       string         `json:"action"`
	Status       string         `json:"status"`
	Scope        string         `json:"scope"`
	Metadata     map[string]any `json:"metadata,omitempty"`
	CreatedAt    time.Time      `json:"created_at"`
}

// AuditFilterFromQuery parses actor_id, resource_type, action, scope,
// from, to (RFC 3339), cursor and limit.
func AuditFilterFromQuery(r *http.Request) (store.AuditFilter, error) {
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

// WriteAuditPage lists audit entries for f as {"entries","next_cursor"}.
func (a *API) WriteAuditPage(w http.ResponseWriter, r *http.Request, f store.AuditFilter) {
	entries, next, err := a.cfg.Store.ListAuditLogs(r.Context(), f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]auditJSON, 0, len(entries))
	for _, e := range entries {
		j := auditJSON{
			ID: e.ID, ActorType: string(e.ActorType), ActorID: e.ActorID, ActorName: e.ActorName,
			ResourceType: e.ResourceType, ResourceID: e.ResourceID, Action: e.Action, Status: string(e.Status),
			Scope: string(e.Scope), CreatedAt: e.CreatedAt,
		}
		if len(e.Metadata) > 0 {
			_ = jsonUnmarshal(e.Metadata, &j.Metadata)
		}
		out = append(out, j)
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out, "next_cursor": next})
}

// teamAuditLogs answers GET /v1/audit-logs for the current team (team
// admins and owners).
func (a *API) teamAuditLogs(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "the audit log needs the admin role in the team"))
		return
	}
	f, err := AuditFilterFromQuery(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	f.TeamID = p.TeamID
	if f.Scope == "" {
		f.Scope = store.ScopeTeam
	}
	a.WriteAuditPage(w, r, f)
}
