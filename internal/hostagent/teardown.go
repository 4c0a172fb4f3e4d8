package hostagent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Teardown after the answer (docs/PERFORMANCE.md): DestroyCapsule
// answers once the capsule is gone from the agent (state file, routes,
// envd connections, sampler); the driver's Destroy (runc delete, cgroup,
// network, disk) then runs in the background. Every teardown is
// accounted for: the agent waits for pending ones before it deletes a
// template and when it closes, retries a failed one, and a teardown an
// agent crash cut short is finished by the next start (the driver's
// capsule has no agent state left, so recover destroys it).
type teardowns struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	pending map[string]time.Time // capsule id → when its teardown began
	failed  int                  // teardowns that failed after every retry
}

// teardownRetries is how often a failed driver Destroy is retried.
const teardownRetries = 3

// teardown destroys id in the driver in the background.
func (a *Agent) teardown(id string) {
	t := &a.teardowns
	t.mu.Lock()
	if t.pending == nil {
		t.pending = map[string]time.Time{}
	}
	t.pending[id] = time.Now()
	t.mu.Unlock()
	t.wg.Go(func() {
		defer func() {
			t.mu.Lock()
			delete(t.pending, id)
			t.mu.Unlock()
		}()
		var err error
		for attempt := range teardownRetries {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			err = a.driver.Destroy(ctx, id)
			if err == nil || errors.Is(err, runtime.ErrNotFound) {
				a.vols.releaseCapsule(ctx, id) // none unless a crash lost track
				cancel()
				return
			}
			cancel()
			a.log.Warn("capsule teardown failed; retrying", "capsule_id", id, "attempt", attempt+1, "err", err)
			time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
		}
		t.mu.Lock()
		t.failed++
		t.mu.Unlock()
		a.log.Error("capsule teardown failed; its leftovers go at the agent's next start", "capsule_id", id, "err", err)
	})
}

// waitTeardownOf waits until id has no teardown pending (or ctx ends).
func (a *Agent) waitTeardownOf(ctx context.Context, id string) error {
	for {
		a.teardowns.mu.Lock()
		_, busy := a.teardowns.pending[id]
		a.teardowns.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitTeardowns waits until no teardown is pending (or ctx ends).
func (a *Agent) waitTeardowns(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		a.teardowns.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Teardowns reports the capsule teardowns still running after their
// answer and those that failed after every retry (leak accounting).
func (a *Agent) Teardowns() (pending, failed int) {
	a.teardowns.mu.Lock()
	defer a.teardowns.mu.Unlock()
	return len(a.teardowns.pending), a.teardowns.failed
}
