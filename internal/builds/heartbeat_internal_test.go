package builds

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// TestHeartbeatKeepsBuildAlive: a build whose runner beats is spared by
// another runner's stale sweep however long its step takes; once the
// beats stop (its replica was killed), the sweep fails it within
// StaleAfter — not after the build's whole timeout (chaos, issue 24).
func TestHeartbeatKeepsBuildAlive(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Short)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := st.CreateBuild(ctx, store.Build{
		ID: store.NewID(store.PrefixBuild), TeamID: store.PlatformTeamID, TemplateName: "x",
		Status: store.BuildPending, Spec: []byte(`{"run":["true"],"timeout_sec":3600}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := st.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "step 1/1: RUN true", ""); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	const staleAfter = 400 * time.Millisecond
	owner := New(Config{Store: st, Scheduler: scheduler.New(st), StaleAfter: staleAfter, Logger: quiet})
	other := New(Config{Store: st, Scheduler: scheduler.New(st), StaleAfter: staleAfter, Logger: quiet})
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() { defer close(stopped); owner.heartbeat(ctx, b, done, quiet) }()
	for range 6 { // 3 × StaleAfter of a "long step"
		time.Sleep(staleAfter / 2)
		if err := other.Pass(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.GetBuild(ctx, b.TeamID, b.ID); got.Status != store.BuildRunning || got.Error != "step 1/1: RUN true" {
			t.Fatalf("a build whose runner beats became %s (%q)", got.Status, got.Error)
		}
	}
	close(done) // the owner dies
	<-stopped
	t0 := time.Now()
	testutil.Eventually(t, 5*time.Second, func() bool {
		_ = other.Pass(ctx)
		got, _ := st.GetBuild(ctx, b.TeamID, b.ID)
		return got.Status == store.BuildFailed && got.Error == MsgInterrupted
	}, "the orphaned build is failed as interrupted")
	if d := time.Since(t0); d > staleAfter+time.Second {
		t.Fatalf("orphaned build failed after %v, want about StaleAfter (%v)", d, staleAfter)
	}
}
