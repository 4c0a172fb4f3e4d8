// Package testutil holds helpers shared by Wrenn's tests: privilege gates,
// standard timeouts and small polling helpers. It is imported only by tests.
package testutil

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// Standard timeouts for tests. Page faults and process starts are slow on the
// CI machines (nested virtualisation), so these are generous.
const (
	// Short bounds a single quick operation (an RPC, a file op).
	Short = 10 * time.Second
	// Long bounds a whole multi-step scenario.
	Long = 2 * time.Minute
)

// RequireRoot skips the test unless it runs as root. Wrenn's CI runs as root,
// so in CI these tests always run; the skip is for developer laptops.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, cgroups, mounts); CI runs as root")
	}
}

// RequireKVM skips the test unless /dev/kvm is usable.
func RequireKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("needs KVM (/dev/kvm: %v); these machines have none", err)
	}
	_ = f.Close()
}

// Context returns a context cancelled after d or when the test ends.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond every 10 ms until it returns true or d elapses, then
// fails the test with msg.
func Eventually(t testing.TB, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("condition not met within %v: %s", d, msg)
}

// fakeInternetLock serialises, across test processes, the test helpers
// that put documentation-range addresses (198.51.100.0/24, 203.0.113.0/24)
// on the host: go test runs packages in parallel, and two "internets"
// would claim the same routes.
const fakeInternetLock = "/run/wrenn-fake-internet.lock"

// LockFakeInternet blocks until no other process holds a fake internet,
// then holds the lock until t ends. Call it before making one, so that its
// removal (registered later) runs before the lock is released.
func LockFakeInternet(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(fakeInternetLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("fake internet lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		t.Fatalf("fake internet lock %s: %v", fakeInternetLock, err)
	}
	t.Cleanup(func() { _ = f.Close() })
}
