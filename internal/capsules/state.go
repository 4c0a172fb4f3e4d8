package capsules

import "github.com/wrenn-dev/wrenn/internal/store"

// transitions is the capsule state machine: every status change the
// service makes (and so every one in the system) is one of these.
//
//	pending ──create──▶ starting ──agent ok──▶ running ⇄ paused / hibernated
//	   any live state ──agent failed / vanished──▶ error
//	   any live state ──host silent──▶ missing ──host back──▶ what the agent reports
//	   live states ──TTL reaped──▶ stopped (terminal)
//	running ──timeout, on_timeout pause──▶ hibernated (pause_reason timeout;
//	   deleted after the paused retention) ──any use with auto_resume──▶ running
//	   (docs/LIFECYCLE.md; the edges are the ones above, taken by TimeoutSweep
//	   and Connect)
//
// The reconciler may also align a capsule with what its agent reports
// (e.g. error → running when the agent says it runs, paused → hibernated
// after an agent restart), which is why some edges go "backwards".
var transitions = map[store.CapsuleStatus][]store.CapsuleStatus{
	store.CapsulePending: {
		store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused, store.CapsuleHibernated,
		store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
	},
	store.CapsuleStarting: {
		store.CapsuleRunning, store.CapsulePaused, store.CapsuleHibernated,
		store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
	},
	store.CapsuleRunning: {
		store.CapsulePaused, store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
	},
	store.CapsulePaused: {
		store.CapsuleRunning, store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
	},
	store.CapsuleHibernated: {
		store.CapsuleRunning, store.CapsulePaused, store.CapsuleStopped, store.CapsuleError,
	},
	store.CapsuleError: {
		store.CapsuleRunning, store.CapsulePaused, store.CapsuleHibernated, store.CapsuleStopped,
	},
	store.CapsuleMissing: {
		store.CapsuleRunning, store.CapsulePaused, store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError,
	},
	store.CapsuleStopped: nil, // terminal: only deletion follows
}

// States lists every capsule status, in the order of the state machine.
var States = []store.CapsuleStatus{
	store.CapsulePending, store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused,
	store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
}

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to store.CapsuleStatus) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// validStatus reports whether s is a capsule status.
func validStatus(s store.CapsuleStatus) bool {
	_, ok := transitions[s]
	return ok
}
