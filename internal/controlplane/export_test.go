package controlplane

import "time"

// SetReconcileSettle shortens how long the reconciler leaves new and
// agent-only capsules alone, until the returned function restores it.
func SetReconcileSettle(d time.Duration) (restore func()) {
	prev := settleOverride.Swap(int64(d))
	return func() { settleOverride.Store(prev) }
}
