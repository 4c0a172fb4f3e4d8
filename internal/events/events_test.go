package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// TestFollowResumeAndReplicas: a follower resumes after Last-Event-ID,
// sees only its team's matching events, and sees events another replica
// (another Recorder on the same store, no Notify) wrote.
func TestFollowResumeAndReplicas(t *testing.T) {
	for _, eng := range teststore.Engines {
		t.Run(eng, func(t *testing.T) {
			st := teststore.Open(t, eng)
			ctx := testutil.Context(t, testutil.Long)
			team, _ := st.CreateTeam(ctx, store.Team{Name: "a"})
			other, _ := st.CreateTeam(ctx, store.Team{Name: "b"})
			hub := &Hub{Store: st, Interval: 20 * time.Millisecond}
			local := &Recorder{Store: st, OnAppend: func(store.Event) { hub.Notify() }}
			remote := &Recorder{Store: st} // "another replica": no notification here
			for i := range 3 {
				local.Emit(ctx, team.ID, CapsuleCreated, fmt.Sprintf("cl-%d", i), nil)
			}
			hctx, stop := context.WithCancel(ctx)
			defer stop()
			go hub.Run(hctx)
			evs, _ := st.ListEvents(ctx, team.ID, store.EventFilter{})
			resumeAfter := evs[0].ID // the client saw the first one

			got := make(chan store.Event, 100)
			fctx, fstop := context.WithCancel(ctx)
			defer fstop()
			go func() {
				_ = Follow(fctx, hub, st, team.ID, store.EventFilter{AfterID: resumeAfter}, time.Second,
					func(e store.Event) error { got <- e; return nil }, func() error { return nil })
			}()
			testutil.Eventually(t, 5*time.Second, func() bool { return hub.Subscribers() == 1 }, "subscribed")
			remote.Emit(ctx, other.ID, CapsuleCreated, "cl-other", nil)
			remote.Emit(ctx, team.ID, CapsuleDestroyed, "cl-9", map[string]any{"reason": "test"})
			var seq []string
			timeout := time.After(10 * time.Second)
			for len(seq) < 3 {
				select {
				case e := <-got:
					if e.TeamID != team.ID {
						t.Fatalf("other team's event %+v", e)
					}
					seq = append(seq, e.Subject)
				case <-timeout:
					t.Fatalf("got %v, want 3 events", seq)
				}
			}
			if fmt.Sprint(seq) != "[cl-1 cl-2 cl-9]" {
				t.Fatalf("order %v", seq)
			}
		})
	}
}

// TestHubLaggedSubscriberCatchesUp: a subscriber that cannot keep up is
// told to catch up from the store and loses nothing.
func TestHubLaggedSubscriberCatchesUp(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Long)
	team, _ := st.CreateTeam(ctx, store.Team{Name: "a"})
	hub := &Hub{Store: st, Interval: 5 * time.Millisecond}
	rec := &Recorder{Store: st, OnAppend: func(store.Event) { hub.Notify() }}
	hctx, stop := context.WithCancel(ctx)
	defer stop()
	go hub.Run(hctx)
	var (
		mu   sync.Mutex
		seen []int64
	)
	release := make(chan struct{})
	fctx, fstop := context.WithCancel(ctx)
	defer fstop()
	go func() {
		_ = Follow(fctx, hub, st, team.ID, store.EventFilter{}, time.Second, func(e store.Event) error {
			<-release // blocked until the hub has dropped batches
			mu.Lock()
			seen = append(seen, e.ID)
			mu.Unlock()
			return nil
		}, func() error { return nil })
	}()
	testutil.Eventually(t, 5*time.Second, func() bool { return hub.Subscribers() == 1 }, "subscribed")
	const n = 200
	for i := range n {
		rec.Emit(ctx, team.ID, CapsuleCreated, fmt.Sprint(i), nil)
		time.Sleep(time.Millisecond)
	}
	close(release)
	testutil.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= n
	}, "all events after lag")
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("out of order or duplicate at %d: %v", i, seen[i-1:i+1])
		}
	}
	if len(seen) != n {
		t.Fatalf("saw %d, want %d", len(seen), n)
	}
}

type failingStore struct{ Store }

func (failingStore) ListEnabledWebhooks(context.Context, string) ([]store.Webhook, error) {
	return nil, errors.New("down")
}

// TestRecorderBestEffort: a nil recorder and store errors never panic or
// fail the caller; the event is still recorded when only the webhook
// lookup failed.
func TestRecorderBestEffort(t *testing.T) {
	var r *Recorder
	r.Emit(context.Background(), "team-x", CapsuleCreated, "cl-1", nil)
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Short)
	team, _ := st.CreateTeam(ctx, store.Team{Name: "a"})
	(&Recorder{Store: failingStore{st}}).Emit(ctx, team.ID, HostUp, "host-1", nil)
	evs, _ := st.ListEvents(ctx, team.ID, store.EventFilter{})
	if len(evs) != 1 || string(evs[0].Data) != "{}" {
		t.Fatalf("events %+v", evs)
	}
}

func TestMatches(t *testing.T) {
	if !Matches(nil, HostUp) || !Matches([]string{HostUp}, HostUp) || Matches([]string{HostDown}, HostUp) {
		t.Fatal("Matches")
	}
	for _, typ := range Types {
		if !ValidType(typ) {
			t.Fatal(typ)
		}
	}
	if ValidType(WebhookTest) {
		t.Fatal("webhook.test is not a log type")
	}
}
