// Package events owns Wrenn's life-cycle event model: the event types, the
// Recorder that appends an event to its team's ordered log (and, in the
// same store transaction, queues one webhook delivery per matching
// endpoint), the Hub that streams new events to live subscribers (SSE),
// and retention.
//
// Invariants:
//   - An event is written once, by the component where the change happens
//     (internal/capsules, internal/builds, the control plane's host
//     liveness loop); recording is best-effort like the audit log: a failed
//     insert is logged and never fails the action, which already happened.
//   - Event ids are the store's; they order a team's log and are the SSE
//     ids and cursors.
//   - The Hub reads the store, not an in-process bus, so every replica
//     streams events written by any replica (PostgreSQL) — an in-process
//     Notify only makes the local poll come sooner.
//   - A webhook delivery row exists exactly when its event does (one
//     transaction): the outbox never misses an event and never holds one
//     the log does not.
package events

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// Event types.
const (
	CapsuleCreated   = "capsule.created"
	CapsuleRunning   = "capsule.running"
	CapsulePaused    = "capsule.paused"
	CapsuleResumed   = "capsule.resumed"
	CapsuleForked    = "capsule.forked"
	CapsuleTimedOut  = "capsule.timed_out"
	CapsuleDestroyed = "capsule.destroyed"
	CapsuleError     = "capsule.error"
	// CapsuleMoved: the capsule now lives on another host (a move or a
	// drain; docs/FLEET.md).
	CapsuleMoved           = "capsule.moved"
	TemplateBuildSucceeded = "template.build.succeeded"
	TemplateBuildFailed    = "template.build.failed"
	HostUp                 = "host.up"
	HostDown               = "host.down"
	// HostDraining / HostDrained: an admin started a drain; the drain
	// moved every capsule off the host.
	HostDraining = "host.draining"
	HostDrained  = "host.drained"
	// WebhookTest is sent only by POST /v1/webhooks/{id}/test; it is not
	// in the log.
	WebhookTest = "webhook.test"
)

// Types lists every type of the log, in the order of the docs.
var Types = []string{
	CapsuleCreated, CapsuleRunning, CapsulePaused, CapsuleResumed, CapsuleForked, CapsuleTimedOut,
	CapsuleDestroyed, CapsuleError, TemplateBuildSucceeded, TemplateBuildFailed, HostUp, HostDown,
	CapsuleMoved, HostDraining, HostDrained,
}

// ValidType reports whether t is a type of the log.
func ValidType(t string) bool { return slices.Contains(Types, t) }

// DefaultRetention is how long events are kept (--event-retention).
const DefaultRetention = 30 * 24 * time.Hour

// JSON is an event as the API, the SSE stream and webhooks carry it.
type JSON struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Time    time.Time       `json:"time"`
	TeamID  string          `json:"team_id"`
	Subject string          `json:"subject"`
	Data    json.RawMessage `json:"data"`
}

// ToJSON is e's wire form. Ids are decimal strings (SSE ids are strings;
// JavaScript numbers cannot hold every int64).
func ToJSON(e store.Event) JSON {
	data := json.RawMessage(e.Data)
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	return JSON{ID: strconv.FormatInt(e.ID, 10), Type: e.Type, Time: e.CreatedAt, TeamID: e.TeamID, Subject: e.Subject, Data: data}
}

// Body is e's JSON body (webhook deliveries, SSE data).
func Body(e store.Event) ([]byte, error) { return json.Marshal(ToJSON(e)) }

// Matches reports whether an endpoint that subscribed to types (empty:
// all) wants an event of type typ.
func Matches(types []string, typ string) bool {
	return len(types) == 0 || slices.Contains(types, typ)
}

// HostTeam is the team whose log gets a host's events: the owning team of
// a BYOC host, the platform team for a shared one.
func HostTeam(h store.Host) string {
	if h.TeamID != "" {
		return h.TeamID
	}
	return store.PlatformTeamID
}

// Store is what the Recorder needs.
type Store interface {
	AppendEvent(ctx context.Context, e store.Event, hooks []string, bodyFor func(store.Event) ([]byte, error)) (store.Event, error)
	ListEnabledWebhooks(ctx context.Context, teamID string) ([]store.Webhook, error)
}

// Recorder appends events. A nil *Recorder records nothing, so components
// can hold one unconditionally.
type Recorder struct {
	Store  Store
	Logger *slog.Logger
	// OnAppend, when set, is called after each event is stored (the
	// local Hub and webhook dispatcher wake at once instead of at their
	// next poll).
	OnAppend func(store.Event)
}

// Emit records an event of type typ about subject for team teamID with
// data (a JSON object; nil is {}). It never fails the caller.
func (r *Recorder) Emit(ctx context.Context, teamID, typ, subject string, data map[string]any) {
	if r == nil || r.Store == nil || teamID == "" {
		return
	}
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	// The change already happened: record it even if the caller's
	// request was just cancelled.
	ctx = context.WithoutCancel(ctx)
	var raw []byte
	if len(data) > 0 {
		b, err := json.Marshal(data)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"data_error": err.Error()})
		}
		raw = b
	}
	hooks, err := r.Store.ListEnabledWebhooks(ctx, teamID)
	if err != nil {
		log.Error("event: listing webhooks failed; recording without deliveries", "type", typ, "subject", subject, "team_id", teamID, "err", err)
	}
	var ids []string
	for _, h := range hooks {
		if Matches(h.EventTypes, typ) {
			ids = append(ids, h.ID)
		}
	}
	e, err := r.Store.AppendEvent(ctx, store.Event{TeamID: teamID, Type: typ, Subject: subject, Data: raw}, ids, Body)
	if err != nil {
		log.Error("event not recorded", "type", typ, "subject", subject, "team_id", teamID, "err", err)
		return
	}
	if r.OnAppend != nil {
		r.OnAppend(e)
	}
}

// Prune deletes events older than retention, every interval until ctx
// ends (one statement per pass; every replica may run it).
func Prune(ctx context.Context, st interface {
	DeleteEventsBefore(ctx context.Context, t time.Time) (int64, error)
}, retention, interval time.Duration, log *slog.Logger,
) {
	if retention <= 0 {
		retention = DefaultRetention
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		n, err := st.DeleteEventsBefore(ctx, time.Now().Add(-retention))
		if err != nil && ctx.Err() == nil {
			log.Warn("event retention pass failed", "err", err)
		} else if n > 0 {
			log.Info("old events pruned", "count", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
