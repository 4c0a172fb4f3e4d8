package capsules_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestLifeCycleEvents: every capsule status change the service stores is
// one event of the team's log, with the right type, in order.
func TestLifeCycleEvents(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg
	cfg.Events = &events.Recorder{Store: f.st}
	svc := capsules.New(cfg)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	id := out.Capsule.ID
	step := func(want store.CapsuleStatus, reason string) {
		t.Helper()
		c, err := svc.Get(ctx, f.scope, id)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := svc.Align(ctx, c, want, reason); err != nil || !ok {
			t.Fatalf("align to %s: %v %v", want, ok, err)
		}
	}
	step(store.CapsuleHibernated, "")
	if _, err := svc.Resume(ctx, f.scope, id, nil); err != nil {
		t.Fatal(err)
	}
	step(store.CapsuleError, "envd stopped answering")
	step(store.CapsuleStopped, "")
	if err := svc.Destroy(ctx, f.scope, id, capsules.DestroyOptions{}); err != nil {
		t.Fatal(err)
	}
	evs, err := f.st.ListEvents(ctx, f.scope.TeamID, store.EventFilter{Subject: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Type)
	}
	want := []string{
		events.CapsuleCreated, events.CapsuleRunning, events.CapsulePaused, events.CapsuleResumed,
		events.CapsuleError, events.CapsuleTimedOut, events.CapsuleDestroyed,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if d := string(evs[4].Data); d == "" || !contains(d, `"reason":"envd stopped answering"`) {
		t.Fatalf("error event data %s", d)
	}
	if d := string(evs[2].Data); !contains(d, `"status":"hibernated"`) {
		t.Fatalf("pause event data %s", d)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
