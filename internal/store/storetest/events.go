package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// testEvents: the per-team log is ordered, filtered, team-isolated and
// pruned by age; deliveries are queued in the event's transaction.
func testEvents(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a, b := newTeam(t, s, "ev-a"), newTeam(t, s, "ev-b")
	old := store.Now().Add(-48 * time.Hour)
	var ids []int64
	for i, typ := range []string{"capsule.created", "capsule.running", "capsule.destroyed"} {
		e := store.Event{TeamID: a.ID, Type: typ, Subject: fmt.Sprintf("cl-%d", i%2), Data: []byte(`{"n":1}`)}
		if i == 0 {
			e.CreatedAt = old
		}
		got := must(s.AppendEvent(ctx, e, nil, nil))(t)
		ids = append(ids, got.ID)
	}
	must(s.AppendEvent(ctx, store.Event{TeamID: b.ID, Type: "capsule.created", Subject: "cl-x"}, nil, nil))(t)
	if ids[0] >= ids[1] || ids[1] >= ids[2] {
		t.Fatalf("ids not increasing: %v", ids)
	}
	all := must(s.ListEvents(ctx, a.ID, store.EventFilter{}))(t)
	eq(t, "team a events", len(all), 3)
	eq(t, "first type", all[0].Type, "capsule.created")
	eq(t, "data", string(all[1].Data), `{"n":1}`)
	after := must(s.ListEvents(ctx, a.ID, store.EventFilter{AfterID: ids[0]}))(t)
	eq(t, "after first", len(after), 2)
	byType := must(s.ListEvents(ctx, a.ID, store.EventFilter{Type: "capsule.running"}))(t)
	eq(t, "by type", len(byType), 1)
	bySubj := must(s.ListEvents(ctx, a.ID, store.EventFilter{Subject: "cl-0"}))(t)
	eq(t, "by subject", len(bySubj), 2)
	page := must(s.ListEvents(ctx, a.ID, store.EventFilter{Limit: 2}))(t)
	eq(t, "page", len(page), 2)
	global := must(s.ListEventsAfter(ctx, 0, 100))(t)
	eq(t, "global", len(global), 4)
	last := must(s.LastEventID(ctx))(t)
	eq(t, "last id", last, global[3].ID)
	n := must(s.DeleteEventsBefore(ctx, store.Now().Add(-24*time.Hour)))(t)
	eq(t, "pruned", n, int64(1))
	eq(t, "after prune", len(must(s.ListEvents(ctx, a.ID, store.EventFilter{}))(t)), 2)

	// A delivery is queued with its event; a failing body builder rolls
	// both back.
	w := must(s.CreateWebhook(ctx, store.Webhook{TeamID: a.ID, URL: "https://example.com/h", Enabled: true, SecretSealed: []byte("x")}))(t)
	e := must(s.AppendEvent(ctx, store.Event{TeamID: a.ID, Type: "host.up", Subject: "host-1"}, []string{w.ID},
		func(e store.Event) ([]byte, error) { return fmt.Appendf(nil, `{"id":%d}`, e.ID), nil }))(t)
	pend := must(s.PendingWebhookDeliveries(ctx, w.ID, 10))(t)
	eq(t, "pending", len(pend), 1)
	eq(t, "body", string(pend[0].Body), fmt.Sprintf(`{"id":%d}`, e.ID))
	eq(t, "event id", pend[0].EventID, e.ID)
	boom := errors.New("boom")
	_, err := s.AppendEvent(ctx, store.Event{TeamID: a.ID, Type: "host.down", Subject: "host-1"}, []string{w.ID},
		func(store.Event) ([]byte, error) { return nil, boom })
	wantErr(t, err, boom)
	eq(t, "rolled back", len(must(s.ListEvents(ctx, a.ID, store.EventFilter{Type: "host.down"}))(t)), 0)
}

// testWebhookOutbox: endpoints are team-scoped; one replica at a time
// holds an endpoint's lease; an attempt is recorded only by the holder.
func testWebhookOutbox(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a, b := newTeam(t, s, "wh-a"), newTeam(t, s, "wh-b")
	w := must(s.CreateWebhook(ctx, store.Webhook{TeamID: a.ID, URL: "https://example.com/h", EventTypes: []string{"capsule.created"}, Enabled: true, SecretSealed: []byte("sealed")}))(t)
	got := must(s.GetWebhook(ctx, a.ID, w.ID))(t)
	eq(t, "url", got.URL, w.URL)
	eq(t, "types", fmt.Sprint(got.EventTypes), "[capsule.created]")
	eq(t, "secret", string(got.SecretSealed), "sealed")
	_, err := s.GetWebhook(ctx, b.ID, w.ID)
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.DeleteWebhook(ctx, b.ID, w.ID), store.ErrNotFound)
	got.Enabled, got.EventTypes, got.URL = false, nil, "https://example.org/x"
	noErr(t, s.UpdateWebhook(ctx, got))
	got = must(s.GetWebhook(ctx, a.ID, w.ID))(t)
	eq(t, "enabled", got.Enabled, false)
	eq(t, "types cleared", len(got.EventTypes), 0)
	eq(t, "enabled list", len(must(s.ListEnabledWebhooks(ctx, a.ID))(t)), 0)
	eq(t, "list", len(must(s.ListWebhooks(ctx, a.ID))(t)), 1)
	noErr(t, s.SetWebhookSecret(ctx, a.ID, w.ID, []byte("new")))
	wantErr(t, s.SetWebhookSecret(ctx, b.ID, w.ID, []byte("x")), store.ErrNotFound)

	d1 := must(s.EnqueueWebhookDelivery(ctx, store.WebhookDelivery{WebhookID: w.ID, TeamID: a.ID, EventType: "webhook.test", Body: []byte("{}")}))(t)
	must(s.EnqueueWebhookDelivery(ctx, store.WebhookDelivery{WebhookID: w.ID, TeamID: a.ID, EventType: "webhook.test", Body: []byte("{}")}))(t)
	now := store.Now()
	due := must(s.DueWebhooks(ctx, now.Add(time.Second), 10))(t)
	eq(t, "due", fmt.Sprint(due), fmt.Sprint([]string{w.ID}))

	// Many replicas race for the lease: exactly one wins.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	for i := range 8 {
		wg.Go(func() {
			owner := fmt.Sprintf("r%d", i)
			ok, err := s.LeaseWebhook(ctx, w.ID, owner, now, now.Add(time.Minute))
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				wins = append(wins, owner)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	eq(t, "lease winners", len(wins), 1)
	owner := wins[0]
	other := "someone-else"
	ok := must(s.FinishWebhookDelivery(ctx, d1.ID, other, store.DeliveryOutcome{Status: store.DeliveryDelivered, AttemptedAt: now, NextAttemptAt: now}))(t)
	eq(t, "non-holder finish", ok, false)
	ok = must(s.FinishWebhookDelivery(ctx, d1.ID, owner, store.DeliveryOutcome{Status: store.DeliveryDelivered, AttemptedAt: now, NextAttemptAt: now, ResponseStatus: 204}))(t)
	eq(t, "holder finish", ok, true)
	ok = must(s.FinishWebhookDelivery(ctx, d1.ID, owner, store.DeliveryOutcome{Status: store.DeliveryDelivered, AttemptedAt: now, NextAttemptAt: now}))(t)
	eq(t, "finish twice", ok, false)
	eq(t, "pending left", len(must(s.PendingWebhookDeliveries(ctx, w.ID, 10))(t)), 1)
	// An expired lease can be taken over; a released one at once.
	ok = must(s.LeaseWebhook(ctx, w.ID, other, now.Add(2*time.Minute), now.Add(3*time.Minute)))(t)
	eq(t, "take over expired lease", ok, true)
	noErr(t, s.ReleaseWebhook(ctx, w.ID, other))
	ok = must(s.LeaseWebhook(ctx, w.ID, owner, now, now.Add(time.Minute)))(t)
	eq(t, "lease after release", ok, true)

	hist := must(s.ListWebhookDeliveries(ctx, a.ID, w.ID, 0, 10))(t)
	eq(t, "history", len(hist), 2)
	eq(t, "newest first", hist[1].ID, d1.ID)
	eq(t, "status", hist[1].Status, store.DeliveryDelivered)
	eq(t, "attempts", hist[1].Attempts, 1)
	eq(t, "response", hist[1].ResponseStatus, 204)
	eq(t, "other team's history", len(must(s.ListWebhookDeliveries(ctx, b.ID, w.ID, 0, 10))(t)), 0)

	noErr(t, s.DeleteWebhook(ctx, a.ID, w.ID))
	eq(t, "deliveries cascade", len(must(s.PendingWebhookDeliveries(ctx, w.ID, 10))(t)), 0)
}
