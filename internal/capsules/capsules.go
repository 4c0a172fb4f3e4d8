// Package capsules is the capsule service: every capsule action — create,
// get, list, exec, pause, resume, set timeout, set public, destroy (one,
// forced, a whole team's), TTL expiry, marking a capsule missing or gone —
// is one method here, shared by the REST API (team and admin routes),
// `wrenn up`, the template build runner and the reconciler. It speaks to
// the store, the scheduler, the host agents and the audit log; it knows
// nothing of HTTP.
//
// Invariants:
//   - Every capsule status change goes through transition, which refuses
//     any move the state machine (state.go) does not list.
//   - Only this package calls the agents' life-cycle RPCs (CreateCapsule,
//     DestroyCapsule, PauseCapsule, ResumeCapsule, SetCapsuleTimeout,
//     PingCapsule) and the store's capsule transitions (CreateCapsule,
//     UpdateCapsuleStatus, FailCapsule, DeleteCapsule); internal/deptest
//     checks it.
//   - A create that fails after the scheduler placed the capsule releases
//     the placement; a capsule that fails on its host is marked error with
//     the reason.
//   - Build capsules (Internal) have no row: they are not listed, not
//     metered and not audited.
//   - Errors a caller can act on are *Error; anything else is internal.
package capsules

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Agents hands out host agent clients (internal/api/agents.Pool).
type Agents interface {
	Client(h store.Host) hostagentv1connect.HostAgentServiceClient
}

// Placer picks a host for a capsule (internal/scheduler.Scheduler).
type Placer interface {
	Pick(ctx context.Context, team store.Team, req scheduler.Request) (store.Host, error)
	// Release forgets a placement whose capsule is gone.
	Release(hostID, capsuleID string)
}

// Config configures a Service. Store, Agents and Scheduler are required.
type Config struct {
	Store     store.Store
	Agents    Agents
	Scheduler Placer
	// Audit, when set, records team and admin actions.
	Audit *audit.Recorder
	// Events, when set, records life-cycle events (internal/events) for
	// every capsule with a row: created, each status change, destroyed.
	Events *events.Recorder
	// OnGone is called after a capsule is destroyed (e.g. to evict cached
	// proxies).
	OnGone func(capsuleID string)
	// ExecTimeout bounds a unary exec that gives no timeout (default 60 s).
	ExecTimeout time.Duration
	// InternetOff is the platform's ceiling (wrenn server
	// --capsule-internet=off): no capsule of a team gets outbound
	// internet, and asking for it is permission_denied. Build capsules keep
	// their own flag.
	InternetOff bool
	// DefaultIsolation is the platform's isolation of a capsule when
	// neither the create, nor its template, nor its team names one (wrenn
	// server --default-isolation; "" = container).
	DefaultIsolation string
	// PausedRetention is how long a capsule paused by its timeout is kept
	// (default DefaultPausedRetention); RetentionSweep deletes it after.
	PausedRetention time.Duration
	// ResumeWait bounds a request's wait for an automatic resume (default
	// DefaultResumeWait).
	ResumeWait time.Duration
	Logger     *slog.Logger
}

// Service is the capsule service.
type Service struct {
	cfg Config
	log *slog.Logger
	// waking holds one automatic resume per capsule.
	waking singleflight.Group
}

// New returns a service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ExecTimeout <= 0 {
		cfg.ExecTimeout = 60 * time.Second
	}
	if cfg.PausedRetention <= 0 {
		cfg.PausedRetention = DefaultPausedRetention
	}
	if cfg.ResumeWait <= 0 {
		cfg.ResumeWait = DefaultResumeWait
	}
	if cfg.Scheduler == nil {
		cfg.Scheduler = scheduler.New(cfg.Store)
	}
	return &Service{cfg: cfg, log: cfg.Logger.With("component", "capsules")}
}

// Scope is who acts. A team caller sees its team's capsules only; a
// platform admin and the system see every team's. Team and admin actions
// are audited (admin ones under the platform team, scope admin); system
// actions (wrenn up's shutdown, the reconciler) are not.
type Scope struct {
	TeamID string
	UserID string
	Actor  audit.Actor
	admin  bool
	system bool
	// shutdown: the platform stopping (wrenn up); its pauses are never
	// deleted by retention.
	shutdown bool
}

// TeamScope is a member (or API key) of teamID acting.
func TeamScope(teamID, userID string, actor audit.Actor) Scope {
	return Scope{TeamID: teamID, UserID: userID, Actor: actor}
}

// AdminScope is a platform admin acting on any team's capsules.
func AdminScope(userID string, actor audit.Actor) Scope {
	return Scope{UserID: userID, Actor: actor, admin: true}
}

// SystemScope is the platform itself acting (not audited).
func SystemScope() Scope {
	return Scope{Actor: audit.Actor{Type: store.ActorSystem}, system: true}
}

// ShutdownScope is the platform pausing capsules as it stops (wrenn up's
// --on-exit pause): like SystemScope, and the pause is recorded as a
// shutdown pause, which retention never deletes.
func ShutdownScope() Scope {
	sc := SystemScope()
	sc.shutdown = true
	return sc
}

// IsAdmin reports whether the scope is a platform admin's.
func (sc Scope) IsAdmin() bool { return sc.admin }

func (sc Scope) anyTeam() bool { return sc.admin || sc.system }

// audit records a capsule action in the scope's log.
func (s *Service) audit(ctx context.Context, sc Scope, c store.Capsule, action string, err error, meta map[string]any) {
	if s.cfg.Audit == nil || sc.system {
		return
	}
	e := audit.Entry{Actor: sc.Actor, ResourceType: "capsule", ResourceID: c.ID, Action: action, Failed: err != nil, Metadata: meta}
	if sc.admin {
		if e.Metadata == nil {
			e.Metadata = map[string]any{}
		}
		e.Metadata["team_id"] = c.TeamID
		s.cfg.Audit.Admin(ctx, e)
		return
	}
	e.TeamID = c.TeamID
	s.cfg.Audit.Log(ctx, e)
}

// idShape reports whether id looks like an ID with prefix (the API's
// rule: 1-64 characters of a-z, 0-9, - and _ after "prefix-").
func idShape(prefix, id string) bool {
	rest, ok := strings.CutPrefix(id, prefix+"-")
	if !ok || len(rest) == 0 || len(rest) > 64 {
		return false
	}
	for _, c := range rest {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// validID checks a capsule ID's shape; anything else is "not found".
func validID(id string) error {
	if !idShape(store.PrefixCapsule, id) {
		return errorf(KindNotFound, "capsule %q not found", clip(id))
	}
	return nil
}

// Get returns capsule id as the scope sees it.
func (s *Service) Get(ctx context.Context, sc Scope, id string) (store.Capsule, error) {
	if err := validID(id); err != nil {
		return store.Capsule{}, err
	}
	var (
		c   store.Capsule
		err error
	)
	if sc.anyTeam() {
		c, err = s.cfg.Store.GetCapsuleUnscoped(ctx, id)
	} else {
		c, err = s.cfg.Store.GetCapsule(ctx, sc.TeamID, id)
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Capsule{}, &Error{Kind: KindNotFound, Message: "capsule \"" + id + "\" not found", Err: err}
	}
	return c, err
}

// ListFilter selects capsules; Status "" is any, Limit 0 the store's default.
type ListFilter struct {
	Status string
	Cursor string
	Limit  int
	// Metadata keeps capsules with every key=value (see store.CapsuleFilter).
	Metadata map[string]string
}

// List returns a page of the scope's capsules (every team's for admins)
// and the cursor of the next page ("" at the end).
func (s *Service) List(ctx context.Context, sc Scope, f ListFilter) ([]store.Capsule, string, error) {
	st := store.CapsuleStatus(f.Status)
	if st != "" && !validStatus(st) {
		return nil, "", errorf(KindInvalid, "unknown status %q", clip(f.Status))
	}
	if f.Limit < 0 || f.Limit > 1000 {
		return nil, "", errorf(KindInvalid, "limit must be an integer from 1 to 1000")
	}
	sf := store.CapsuleFilter{Cursor: f.Cursor, Status: st, Limit: f.Limit, Metadata: f.Metadata}
	if sc.anyTeam() {
		return s.cfg.Store.AdminListCapsules(ctx, sf)
	}
	return s.cfg.Store.ListCapsules(ctx, sc.TeamID, sf)
}

// transition moves c to `to` if the state machine allows it, in one
// conditional store update from c.Status; reason is kept when `to` is
// error. It reports whether the update applied (false: the capsule was
// no longer in c.Status).
func (s *Service) transition(ctx context.Context, c store.Capsule, to store.CapsuleStatus, reason string) (bool, error) {
	if !CanTransition(c.Status, to) {
		return false, errorf(KindConflict, "capsule %s cannot go from %s to %s", c.ID, c.Status, to)
	}
	var (
		ok  bool
		err error
	)
	if to == store.CapsuleError {
		ok, err = s.cfg.Store.FailCapsule(ctx, c.TeamID, c.ID, c.Status, clip(reason))
	} else {
		ok, err = s.cfg.Store.UpdateCapsuleStatus(ctx, c.TeamID, c.ID, c.Status, to)
	}
	if ok && err == nil {
		s.statusEvent(ctx, c, to, reason)
	}
	return ok, err
}

// statusEvent records the life-cycle event of a status change c.Status →
// to that was just stored (internal/events); moves with no event type
// (to starting or missing) record nothing.
func (s *Service) statusEvent(ctx context.Context, c store.Capsule, to store.CapsuleStatus, reason string) {
	typ := ""
	switch to {
	case store.CapsuleRunning:
		typ = events.CapsuleRunning
		if c.Status.IsPaused() {
			typ = events.CapsuleResumed
		}
	case store.CapsulePaused, store.CapsuleHibernated:
		typ = events.CapsulePaused
	case store.CapsuleStopped:
		typ = events.CapsuleTimedOut // the only way to stopped: its host reaped it at its timeout
	case store.CapsuleError:
		typ = events.CapsuleError
	}
	if typ == "" {
		return
	}
	data := map[string]any{"status": string(to), "previous_status": string(c.Status)}
	if reason != "" && to == store.CapsuleError {
		data["reason"] = clip(reason)
	}
	if c.HostID != "" {
		data["host_id"] = c.HostID
	}
	s.cfg.Events.Emit(ctx, c.TeamID, typ, c.ID, data)
}

// gone is called after a capsule was destroyed and forgotten.
func (s *Service) gone(hostID, id string) {
	s.cfg.Scheduler.Release(hostID, id)
	if s.cfg.OnGone != nil {
		s.cfg.OnGone(id)
	}
}
