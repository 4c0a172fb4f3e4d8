package builds_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// claimCounter is a real store that counts the build claims that applied.
type claimCounter struct {
	store.Store
	claims sync.Map // build id → *atomic.Int64
}

func (c *claimCounter) UpdateBuildStatus(ctx context.Context, teamID, id string, from []store.BuildStatus, to store.BuildStatus, errMsg, templateID string) (bool, error) {
	ok, err := c.Store.UpdateBuildStatus(ctx, teamID, id, from, to, errMsg, templateID)
	if ok && to == store.BuildRunning && len(from) == 1 && from[0] == store.BuildPending {
		n, _ := c.claims.LoadOrStore(id, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	return ok, err
}

// TestRunnersClaimEachBuildOnce: several runners (replicas) passing over
// the same store at once claim every pending build exactly once. No host
// is registered, so every build then fails with a clear message.
func TestRunnersClaimEachBuildOnce(t *testing.T) {
	for _, kind := range teststore.Engines {
		t.Run(kind, func(t *testing.T) {
			st := &claimCounter{Store: teststore.Open(t, kind)}
			ctx := testutil.Context(t, testutil.Long)
			n := 20
			if testing.Short() {
				n = 8
			}
			var ids []string
			for i := range n {
				b, err := st.CreateBuild(ctx, store.Build{
					ID: store.NewID(store.PrefixBuild), TeamID: store.PlatformTeamID, TemplateName: fmt.Sprintf("t%d", i),
					Status: store.BuildPending, Spec: []byte(`{"from":"minimal","run":["true"]}`),
				})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, b.ID)
			}
			var runners []*builds.Runner
			for range 4 {
				runners = append(runners, builds.New(builds.Config{
					Store: st, Scheduler: scheduler.New(st), MaxConcurrent: n, Logger: quiet,
				}))
			}
			var wg sync.WaitGroup
			for _, r := range runners {
				wg.Go(func() {
					if err := r.Pass(ctx); err != nil {
						t.Errorf("pass: %v", err)
					}
					r.Wait()
				})
			}
			wg.Wait()
			for _, id := range ids {
				v, _ := st.claims.Load(id)
				if v == nil || v.(*atomic.Int64).Load() != 1 {
					t.Errorf("build %s claimed %v times, want 1", id, v)
				}
				b, err := st.GetBuild(ctx, store.PlatformTeamID, id)
				if err != nil {
					t.Fatal(err)
				}
				if b.Status != store.BuildFailed || !strings.Contains(b.Error, "no host can run the build") || b.FinishedAt == nil {
					t.Errorf("build = %s %q", b.Status, b.Error)
				}
			}
		})
	}
}

// TestStaleSweepSparesFreshBuilds: a running build touched recently is not
// declared interrupted.
func TestStaleSweepSparesFreshBuilds(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Short)
	b, err := st.CreateBuild(ctx, store.Build{
		ID: store.NewID(store.PrefixBuild), TeamID: store.PlatformTeamID, TemplateName: "x",
		Status: store.BuildPending, Spec: []byte(`{"run":["true"],"timeout_sec":1}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := st.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "", ""); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	r := builds.New(builds.Config{Store: st, Scheduler: scheduler.New(st), StaleAfter: time.Hour, Logger: quiet})
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetBuild(ctx, b.TeamID, b.ID); got.Status != store.BuildRunning {
		t.Fatalf("fresh running build became %s (%q)", got.Status, got.Error)
	}
}
