package container_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/fakeinet"
)

// TestWarmPoolAuto: a pool sized by demand (the default of `wrenn up` and
// `wrenn agent`) keeps one capsule when idle, grows when creates come
// faster than it refills, reports itself (runtime.WarmPoolReporter), and
// starts no refill while a real create is in flight (for up to a second:
// a steady stream of creates must not starve the pool).
func TestWarmPoolAuto(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	var (
		creating  atomic.Int32
		overlap   atomic.Int32
		warmRuns  atomic.Int32
		holdGate  = make(chan struct{})
		holdFirst atomic.Bool
		held      atomic.Bool
	)
	cfg.CreateSteps = func(s *runtime.Steps) {
		switch s.Op {
		case container.OpCreate:
			_ = s.Wrap("dir", func(ctx context.Context, next func(context.Context) error) error {
				creating.Add(1)
				defer creating.Add(-1)
				if holdFirst.CompareAndSwap(true, false) {
					select {
					case <-holdGate:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return next(ctx)
			})
		case container.OpWarm:
			warmRuns.Add(1)
			_ = s.Wrap("dir", func(ctx context.Context, next func(context.Context) error) error {
				if held.Load() {
					overlap.Add(1)
				}
				return next(ctx)
			})
		}
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	pools := func() runtime.WarmPoolStatus {
		for _, p := range d.WarmPools() {
			if p.Template == tmplName {
				return p
			}
		}
		return runtime.WarmPoolStatus{}
	}

	d.SetWarmPool(tmplName, runtime.WarmPoolAuto)
	testutil.Eventually(t, testutil.Long, func() bool { return d.WarmPoolSize(tmplName) == 1 }, "idle auto pool holds one")
	time.Sleep(1500 * time.Millisecond) // a resize pass: it stays at one
	if p := pools(); p.Ready != 1 || p.Target != 1 || !p.Auto || p.Max != runtime.WarmPoolAutoMax {
		t.Fatalf("idle pool %+v, want ready 1, target 1, auto, max %d", p, runtime.WarmPoolAutoMax)
	}

	// A real create in flight: the pool is empty after the take, yet no
	// refill starts until the create is done.
	holdFirst.Store(true)
	held.Store(true)
	created := make(chan error, 1)
	go func() {
		_, err := d.Create(ctx, runtime.Spec{ID: "cl-pool-b", Template: tmplName})
		created <- err
	}()
	testutil.Eventually(t, testutil.Long, func() bool { return creating.Load() == 1 }, "create in flight")
	runsBefore := warmRuns.Load()
	if _, err := d.Take(ctx, runtime.Spec{ID: "cl-pool-a", Template: tmplName}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	if got := warmRuns.Load(); got != runsBefore {
		t.Errorf("a refill started while a create was in flight (%d warm runs during it)", got-runsBefore)
	}
	held.Store(false)
	close(holdGate)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	// Two creates within the window: the pool grows to at least two.
	if _, err := d.Take(ctx, runtime.Spec{ID: "cl-pool-c", Template: tmplName}); err != nil && !errors.Is(err, runtime.ErrPoolEmpty) {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Long, func() bool { p := pools(); return p.Target >= 2 && p.Ready >= 2 }, "pool grew with demand")
	p := pools()
	if p.Hits < 1 || p.Hits+p.Misses < 2 {
		t.Errorf("pool counters %+v, want at least 1 hit and 2 takes", p)
	}
	if n := overlap.Load(); n != 0 {
		t.Errorf("%d warm-pool capsules were started while a real create ran", n)
	}

	d.SetWarmPool(tmplName, 0)
	if got := d.WarmPoolSize(tmplName); got != 0 {
		t.Errorf("after SetWarmPool 0: %d ready", got)
	}
	for _, id := range []string{"cl-pool-a", "cl-pool-b", "cl-pool-c"} {
		if err := d.Destroy(ctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			t.Error(err)
		}
	}
}

// TestWarmPoolTakeNetwork: a warm-pool capsule is held without egress; a
// take with internet reaches the internet (the pool's network was set up
// for the default policy and is only released), a take without internet
// does not.
func TestWarmPoolTakeNetwork(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	inetAddr := fakeinet.New(t, "wpn").Serve(t)
	d.SetWarmPool(tmplName, 1)
	for i, internet := range []bool{true, false} {
		testutil.Eventually(t, testutil.Long, func() bool { return d.WarmPoolSize(tmplName) == 1 }, "pool filled")
		id := fmt.Sprintf("cl-wpnet%d", i)
		info, err := d.Take(ctx, runtime.Spec{ID: id, Template: tmplName, AllowInternet: internet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
		if err := d.WaitReady(ctx, info); err != nil {
			t.Fatal(err)
		}
		if got, out := fetch(ctx, d, id, inetAddr, "/health"); got != internet {
			t.Errorf("taken with allow_internet=%v: internet reachable = %v (%s)", internet, got, out)
		}
	}
}
