package capsules_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestHostTemplateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		tmpl store.Template
		want string
	}{
		{"public by name", store.Template{ID: "tpl-minimal", TeamID: store.PlatformTeamID, Name: "minimal", Public: true}, "minimal"},
		{"team template by id", store.Template{ID: "tpl-0123456789abcdef", TeamID: "team-a", Name: "tools"}, "tpl-0123456789abcdef"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := capsules.HostTemplateName(tc.tmpl); got != tc.want {
				t.Fatalf("HostTemplateName = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestStateMachine walks every pair of states: the allowed moves are
// exactly the ones the life cycle makes (create, pause, resume, failure,
// host loss and return, TTL), and everything else is refused.
func TestStateMachine(t *testing.T) {
	const (
		pending    = store.CapsulePending
		starting   = store.CapsuleStarting
		running    = store.CapsuleRunning
		paused     = store.CapsulePaused
		hibernated = store.CapsuleHibernated
		stopped    = store.CapsuleStopped
		errored    = store.CapsuleError
		missing    = store.CapsuleMissing
	)
	allowed := map[[2]store.CapsuleStatus]string{
		{pending, starting}:    "create: recorded, sent to the host",
		{starting, running}:    "create: the host started it",
		{starting, errored}:    "create: the host refused",
		{running, paused}:      "pause in memory",
		{running, hibernated}:  "pause to disk",
		{paused, running}:      "resume",
		{hibernated, running}:  "resume from disk",
		{paused, hibernated}:   "agent restart keeps a frozen capsule on disk",
		{hibernated, paused}:   "the agent reports it frozen",
		{running, errored}:     "vanished after a failed pause",
		{paused, errored}:      "vanished after a failed resume",
		{hibernated, errored}:  "vanished after a failed resume",
		{pending, missing}:     "host went silent",
		{starting, missing}:    "host went silent",
		{running, missing}:     "host went silent",
		{paused, missing}:      "host went silent",
		{missing, running}:     "host back, capsule running",
		{missing, paused}:      "host back, capsule frozen",
		{missing, hibernated}:  "host back, capsule on disk",
		{missing, stopped}:     "host back, capsule reaped",
		{missing, errored}:     "host back without the capsule",
		{pending, running}:     "reconciler: the agent runs it",
		{pending, paused}:      "reconciler",
		{pending, hibernated}:  "reconciler",
		{pending, stopped}:     "reconciler: reaped by its TTL",
		{pending, errored}:     "reconciler: never reached its host",
		{starting, paused}:     "reconciler",
		{starting, hibernated}: "reconciler",
		{starting, stopped}:    "reconciler: reaped by its TTL",
		{running, stopped}:     "TTL expiry",
		{paused, stopped}:      "reconciler: the agent stopped it",
		{hibernated, stopped}:  "reconciler: the agent stopped it",
		{errored, running}:     "reconciler: the agent runs it after all",
		{errored, paused}:      "reconciler",
		{errored, hibernated}:  "reconciler",
		{errored, stopped}:     "reconciler",
	}
	for _, from := range capsules.States {
		for _, to := range capsules.States {
			_, want := allowed[[2]store.CapsuleStatus{from, to}]
			if got := capsules.CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	// Spot checks of refusals that matter.
	for _, tr := range [][2]store.CapsuleStatus{
		{stopped, running},
		{stopped, errored},
		{running, pending},
		{running, starting},
		{hibernated, missing},
		{errored, missing},
		{running, running},
	} {
		if capsules.CanTransition(tr[0], tr[1]) {
			t.Errorf("%s → %s is allowed; it must not be", tr[0], tr[1])
		}
	}
}
