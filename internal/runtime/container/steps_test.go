package container_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

var errInjected = errors.New("injected failure")

// failAfter wraps step name of s so that it runs and then fails.
func failAfter(t testing.TB, s *runtime.Steps, name string) {
	if err := s.Wrap(name, func(ctx context.Context, next func(context.Context) error) error {
		if err := next(ctx); err != nil {
			return err
		}
		return errInjected
	}); err != nil {
		t.Error(err)
	}
}

// wantStepError checks that err is the injected failure of step.
func wantStepError(t *testing.T, err error, op, step string) {
	t.Helper()
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Op != op || se.Step != step || !errors.Is(err, errInjected) {
		t.Fatalf("err = %v, want the injected failure of %s step %s", err, op, step)
	}
}

func assertNoCapsuleDirs(t *testing.T, stateDir string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(stateDir, "capsules"))
	if err != nil || len(entries) != 0 {
		t.Errorf("capsule directories left: %v (err %v)", entries, err)
	}
}

// TestCreateStepsFailureLeavesNothing: the create, warm-pool and restore
// paths run as named step lists that Config.CreateSteps can read and wrap.
// A failure injected in a late step (after the rootfs is mounted, the
// network is up and, for the pool and restore, envd runs) undoes every
// step: no netns, mount, loop device, cgroup, process, nft rule or capsule
// directory is left, and the same operation then succeeds.
func TestCreateStepsFailureLeavesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	mgr, _ := localManager(t, filepath.Join(dir, "snaps"))
	cfg.Snapshots = mgr
	var (
		mu       sync.Mutex
		names    = map[string][]string{}
		failStep = map[string]string{} // op → step to fail after
		warmRuns atomic.Int32
	)
	gate := make(chan struct{})
	cfg.CreateSteps = func(s *runtime.Steps) {
		mu.Lock()
		defer mu.Unlock()
		names[s.Op] = s.Names()
		run := int32(0)
		if s.Op == container.OpWarm {
			run = warmRuns.Add(1)
		}
		if step := failStep[s.Op]; step != "" && run <= 1 {
			failAfter(t, s, step)
		}
		if run == 2 {
			// Hold the pool's second attempt before it makes anything
			// until the first one's leftovers are counted.
			_ = s.Wrap("dir", func(ctx context.Context, next func(context.Context) error) error {
				select {
				case <-gate:
				case <-ctx.Done():
					return ctx.Err()
				}
				return next(ctx)
			})
		}
	}
	setFail := func(op, step string) {
		mu.Lock()
		defer mu.Unlock()
		failStep[op] = step
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)

	// Create: fail after "state" (everything exists by then).
	setFail(container.OpCreate, "state")
	_, err := d.Create(ctx, runtime.Spec{ID: "cl-steps", Template: tmplName, AllowInternet: true})
	wantStepError(t, err, container.OpCreate, "state")
	if want := []string{"dir", "network", "rootfs", "etc", "bundle", "state"}; !slices.Equal(names[container.OpCreate], want) {
		t.Errorf("create steps %v, want %v", names[container.OpCreate], want)
	}
	if _, err := d.Inspect(ctx, "cl-steps"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Inspect after the failed create: %v, want ErrNotFound", err)
	}
	assertClean(t, d)
	assertNoCapsuleDirs(t, dir)
	setFail(container.OpCreate, "")
	startCapsule(t, d, runtime.Spec{ID: "cl-steps"})
	if want := []string{"start"}; !slices.Equal(names[container.OpStart], want) {
		t.Errorf("start steps %v, want %v", names[container.OpStart], want)
	}

	// Restore: fail after "save", when envd runs again.
	snap, err := d.Snapshot(ctx, "cl-steps")
	if err != nil {
		t.Fatal(err)
	}
	setFail(container.OpRestore, "save")
	_, err = d.Restore(ctx, snap)
	wantStepError(t, err, container.OpRestore, "save")
	if want := []string{"dir", "network", "image", "rootfs", "etc", "bundle", "state", "memory", "start", "save"}; !slices.Equal(names[container.OpRestore], want) {
		t.Errorf("restore steps %v, want %v", names[container.OpRestore], want)
	}
	if _, err := d.Inspect(ctx, "cl-steps"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Inspect after the failed restore: %v, want ErrNotFound", err)
	}
	assertClean(t, d)
	assertNoCapsuleDirs(t, dir)
	setFail(container.OpRestore, "")
	info, err := d.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore after the failed one: %v", err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, "cl-steps"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, d)

	// Warm pool: the first capsule fails after "freeze", when envd ran,
	// answered and was frozen; the pool's next attempt waits at the gate
	// meanwhile and then succeeds.
	setFail(container.OpWarm, "freeze")
	d.SetWarmPool(tmplName, 1)
	deadline := time.Now().Add(testutil.Long)
	for warmRuns.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if warmRuns.Load() < 2 {
		t.Fatal("the warm pool did not retry after the injected failure")
	}
	if want := []string{"dir", "network", "rootfs", "etc", "bundle", "state", "start", "wait-ready", "freeze"}; !slices.Equal(names[container.OpWarm], want) {
		t.Errorf("warm steps %v, want %v", names[container.OpWarm], want)
	}
	assertClean(t, d)
	assertNoCapsuleDirs(t, dir)
	close(gate)
	for d.WarmPoolSize(tmplName) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	info, err = d.Take(ctx, runtime.Spec{ID: "cl-steps-warm", Template: tmplName})
	if err != nil {
		t.Fatalf("Take after the failed warm capsule: %v", err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	d.SetWarmPool(tmplName, 0)
	if err := d.Destroy(ctx, "cl-steps-warm"); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, d)
}
