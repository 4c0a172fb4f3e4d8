// Package audit records who did what: every team action (scope "team",
// under the acting team) and every admin-panel action (scope "admin", under
// the platform team). Recording is best-effort by design — a failed audit
// insert is logged loudly but never fails the action it describes, because
// the action has already happened. Entry and Log are the extension points
// other modules use to add their own events.
package audit

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// Actor identifies who acted.
type Actor struct {
	Type store.ActorType
	ID   string
	Name string
}

// Entry is one audited action.
type Entry struct {
	TeamID       string
	Actor        Actor
	ResourceType string // "capsule", "api_key", "member", "user", "team", "template", "build", …
	ResourceID   string
	Action       string // "create", "delete", "pause", "resume", "grant_admin", …
	Failed       bool
	Metadata     map[string]any
}

// Inserter is the store method the recorder needs.
type Inserter interface {
	InsertAuditLog(ctx context.Context, e store.AuditLog) (store.AuditLog, error)
}

// Recorder writes entries to the store.
type Recorder struct {
	Store  Inserter
	Logger *slog.Logger
}

// Log records a team-scoped entry.
func (r *Recorder) Log(ctx context.Context, e Entry) {
	r.insert(ctx, e, store.ScopeTeam)
}

// Admin records an admin-panel action under the platform team with scope "admin".
func (r *Recorder) Admin(ctx context.Context, e Entry) {
	e.TeamID = store.PlatformTeamID
	r.insert(ctx, e, store.ScopeAdmin)
}

func (r *Recorder) insert(ctx context.Context, e Entry, scope store.AuditScope) {
	status := store.AuditSuccess
	if e.Failed {
		status = store.AuditFailure
	}
	var meta []byte
	if len(e.Metadata) > 0 {
		b, err := json.Marshal(e.Metadata)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"metadata_error": err.Error()})
		}
		meta = b
	}
	// The action already happened: record it even if the caller's request
	// context was just cancelled.
	ctx = context.WithoutCancel(ctx)
	_, err := r.Store.InsertAuditLog(ctx, store.AuditLog{
		TeamID:       e.TeamID,
		ActorType:    e.Actor.Type,
		ActorID:      e.Actor.ID,
		ActorName:    e.Actor.Name,
		ResourceType: e.ResourceType,
		ResourceID:   e.ResourceID,
		Action:       e.Action,
		Status:       status,
		Scope:        scope,
		Metadata:     meta,
	})
	if err != nil && r.Logger != nil {
		r.Logger.Error("audit log insert failed", "team_id", e.TeamID, "action", e.Action,
			"resource_type", e.ResourceType, "resource_id", e.ResourceID, "err", err)
	}
}
