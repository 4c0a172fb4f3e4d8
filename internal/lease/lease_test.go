package lease_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/lease"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// counter records which replica ran each pass, and fails on overlap.
type counter struct {
	mu      sync.Mutex
	by      map[string]int
	running atomic.Int32
	overlap atomic.Bool
}

func (c *counter) pass(holder string) func(context.Context) error {
	return func(context.Context) error {
		if c.running.Add(1) > 1 {
			c.overlap.Store(true)
		}
		time.Sleep(5 * time.Millisecond)
		c.running.Add(-1)
		c.mu.Lock()
		c.by[holder]++
		c.mu.Unlock()
		return nil
	}
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for k, v := range c.by {
		m[k] = v
	}
	return m
}

// TestOneReplicaRunsTheJob: two replicas looping on one job over a shared
// store (SQLite and PostgreSQL): exactly one runs it, never both at once;
// when it stops (releasing its lease) the other takes over at its next
// tick; when a holder dies without releasing, the job resumes on the other
// replica once the lease expires.
func TestOneReplicaRunsTheJob(t *testing.T) {
	for _, eng := range teststore.Engines {
		t.Run(eng, func(t *testing.T) {
			s := teststore.Open(t, eng)
			const every = 40 * time.Millisecond
			c := &counter{by: map[string]int{}}
			a, b := lease.New(s, "replica-a", nil), lease.New(s, "replica-b", nil)
			actx, acancel := context.WithCancel(context.Background())
			bctx, bcancel := context.WithCancel(context.Background())
			defer bcancel()
			var wg sync.WaitGroup
			wg.Go(func() { a.Loop(actx, "job", every, c.pass("a")) })
			time.Sleep(every / 2)
			wg.Go(func() { b.Loop(bctx, "job", every, c.pass("b")) })
			time.Sleep(30 * every)
			got := c.snapshot()
			if got["a"] < 10 || got["b"] != 0 {
				t.Fatalf("while a holds the lease: passes %v, want a only (≥ 10)", got)
			}
			acancel() // a stops and releases its lease
			time.Sleep(10 * every)
			after := c.snapshot()
			if after["b"] < 3 {
				t.Fatalf("after a released the lease: passes %v, want b to have taken over", after)
			}
			bcancel()
			wg.Wait()
			if c.overlap.Load() {
				t.Fatal("two replicas ran the job at the same time")
			}

			// A holder that dies (kill -9: no release) keeps the job until
			// its lease expires.
			dead := lease.New(s, "replica-dead", nil)
			if !dead.Hold(context.Background(), "job2", lease.MinTTL) {
				t.Fatal("dead replica could not take a free lease")
			}
			took := time.Now()
			c2 := &counter{by: map[string]int{}}
			cctx, ccancel := context.WithCancel(context.Background())
			defer ccancel()
			var started atomic.Int64
			wg.Go(func() {
				b.Loop(cctx, "job2", every, func(ctx context.Context) error {
					started.CompareAndSwap(0, time.Now().UnixNano())
					return c2.pass("b")(ctx)
				})
			})
			deadline := time.Now().Add(lease.MinTTL + 2*time.Second)
			for started.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(every)
			}
			ccancel()
			wg.Wait()
			if started.Load() == 0 {
				t.Fatalf("b never took over the dead replica's lease (TTL %v)", lease.MinTTL)
			}
			wait := time.Unix(0, started.Load()).Sub(took)
			if wait < lease.MinTTL-50*time.Millisecond {
				t.Fatalf("b ran the job %v after the dead replica took it: before its lease (%v) expired", wait, lease.MinTTL)
			}
			t.Logf("takeover after a dead holder: %v (TTL %v)", wait.Round(time.Millisecond), lease.MinTTL)
		})
	}
}
