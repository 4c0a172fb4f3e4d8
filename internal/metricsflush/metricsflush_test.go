package metricsflush_test

import (
	"context"
	"math"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/hostagent/metrics"
	"github.com/wrenn-dev/wrenn/internal/metricsflush"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// metricsAgent serves GetCapsuleMetrics over Connect from the host agent's
// own ring buffers (internal/hostagent/metrics), the way the agent does;
// the other RPCs are not part of this test.
type metricsAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	mu     sync.Mutex
	series map[string]*metrics.Series
	calls  map[pb.MetricsWindow]int
}

func (m *metricsAgent) GetCapsuleMetrics(_ context.Context, req *connect.Request[pb.GetCapsuleMetricsRequest]) (*connect.Response[pb.GetCapsuleMetricsResponse], error) {
	m.mu.Lock()
	s := m.series[req.Msg.GetCapsuleId()]
	m.calls[req.Msg.GetWindow()]++
	m.mu.Unlock()
	if s == nil {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	tier := 0
	if req.Msg.GetWindow() == pb.MetricsWindow_METRICS_WINDOW_2H {
		tier = 1
	}
	out := &pb.GetCapsuleMetricsResponse{ResolutionSec: int32(s.Tiers()[tier].Resolution / time.Second)}
	for _, p := range s.Points(tier, time.Now()) {
		out.Points = append(out.Points, &pb.MetricPoint{
			TsMs: p.Time.UnixMilli(), CpuUsedPct: p.CPUUsedPct, CpuCount: int32(p.CPUCount), //nolint:gosec // small
			MemUsedBytes: p.MemUsed, MemTotalBytes: p.MemTotal,
		})
	}
	return connect.NewResponse(out), nil
}

type fixture struct {
	st    store.Store
	agent *metricsAgent
	pool  *agents.Pool
	cap   store.Capsule
	s     *metrics.Series
}

func setup(t *testing.T, engine string) *fixture {
	t.Helper()
	ctx := context.Background()
	st := teststore.Open(t, engine)
	ag := &metricsAgent{series: map[string]*metrics.Series{}, calls: map[pb.MetricsWindow]int{}}
	mux := http.NewServeMux()
	mux.Handle(hostagentv1connect.NewHostAgentServiceHandler(ag))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	team, err := st.CreateTeam(ctx, store.Team{Name: "metered"})
	if err != nil {
		t.Fatal(err)
	}
	tok := "hosttok"
	if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken(tok), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h, err := st.RegisterHost(ctx, auth.HashToken(tok), store.Host{ID: store.NewID(store.PrefixHost), Address: ln.Addr().String(), VCPUs: 4, MemoryMB: 4096})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.CreateCapsule(ctx, store.Capsule{
		ID: store.NewID(store.PrefixCapsule), TeamID: team.ID, TemplateID: "tpl-base", HostID: h.ID,
		Status: store.CapsuleRunning, VCPUs: 2, MemoryMB: 512, DiskSizeMB: 1024, TimeoutSec: 300,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A paused capsule on the same host is not asked.
	if _, err := st.CreateCapsule(ctx, store.Capsule{
		ID: store.NewID(store.PrefixCapsule), TeamID: team.ID, TemplateID: "tpl-base", HostID: h.ID,
		Status: store.CapsulePaused, VCPUs: 1, MemoryMB: 512, DiskSizeMB: 1024, TimeoutSec: 300,
	}); err != nil {
		t.Fatal(err)
	}
	s := metrics.NewSeries(nil)
	ag.series[c.ID] = s
	pool := agents.New(agents.Config{Key: []byte("0123456789abcdef0123456789abcdef")})
	t.Cleanup(pool.Close)
	return &fixture{st: st, agent: ag, pool: pool, cap: c, s: s}
}

// add records one sample per second in [from, to): cpuPct of 2 CPUs and mem bytes.
func (fx *fixture) add(from, to time.Time, cpuPct float64, mem uint64) {
	for t := from; t.Before(to); t = t.Add(time.Second) {
		fx.s.Add(metrics.Point{Time: t, CPUUsedPct: cpuPct, CPUCount: 2, MemUsed: mem, MemTotal: 1 << 30})
	}
}

func (fx *fixture) sum(t *testing.T) store.UsageSum {
	t.Helper()
	sums, err := fx.st.SumUsage(context.Background(), fx.cap.TeamID, store.MinTime, store.MaxTime)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) == 0 {
		return store.UsageSum{}
	}
	return sums[0]
}

func near(got, want float64) bool { return math.Abs(got-want) < 1e-6 }

func TestFlushStoresEachBucketOnce(t *testing.T) {
	for _, engine := range teststore.Engines {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			fx := setup(t, engine)
			now := time.Now().UTC().Truncate(time.Second)
			// 120 s of samples at 50 % of 2 CPUs (= 1 core) and 256 MiB,
			// ending 5 s ago (all complete).
			fx.add(now.Add(-125*time.Second), now.Add(-5*time.Second), 50, 256<<20)
			f := &metricsflush.Flusher{Store: fx.st, Agents: fx.pool}
			n, err := f.FlushOnce(ctx)
			if err != nil || n != 120 {
				t.Fatalf("first flush stored %d, %v; want 120", n, err)
			}
			if n, err := f.FlushOnce(ctx); err != nil || n != 0 {
				t.Fatalf("second flush stored %d, %v; want 0", n, err)
			}
			got := fx.sum(t)
			if !near(got.CPUMinutes, 2) || !near(got.RAMMBMinutes, 256*2) {
				t.Fatalf("usage = %+v, want 2 cpu-minutes and 512 MB-minutes", got)
			}
			snaps, err := fx.st.ListCapsuleMetricSnapshots(ctx, fx.cap.TeamID, fx.cap.ID, store.MinTime, store.MaxTime)
			if err != nil {
				t.Fatal(err)
			}
			if s := snaps[0]; s.IntervalMS != 1000 || !near(s.CPUCores, 1) || s.MemBytes != 256<<20 {
				t.Fatalf("snapshot = %+v", s)
			}

			// A bucket still filling (ends within the grace) waits.
			fx.add(now.Add(-5*time.Second), now.Add(time.Second), 100, 512<<20)
			n, err = f.FlushOnce(ctx)
			if err != nil || n < 2 || n > 6 {
				t.Fatalf("third flush stored %d, %v; want the 2-6 completed buckets", n, err)
			}

			// A restarted flusher recovers its watermark from the store.
			time.Sleep(3 * time.Second)
			f2 := &metricsflush.Flusher{Store: fx.st, Agents: fx.pool}
			n2, err := f2.FlushOnce(ctx)
			if err != nil || n+n2 != 6 {
				t.Fatalf("restarted flusher stored %d (after %d), %v; want 6 in all", n2, n, err)
			}
			got = fx.sum(t)
			// 120 s at 1 core + 6 s at 2 cores; 120 s at 256 MiB + 6 s at 512 MiB.
			if !near(got.CPUMinutes, 2+6*2.0/60) || !near(got.RAMMBMinutes, 512+6*512.0/60) {
				t.Fatalf("usage = %+v", got)
			}
			if n, err := f2.FlushOnce(ctx); err != nil || n != 0 {
				t.Fatalf("idle flush stored %d, %v", n, err)
			}
		})
	}
}

// TestFlushFillsGapFromCoarseWindow: a flusher that fell more than ten
// minutes behind fills the gap from the 10 s window and still stores
// nothing twice.
func TestFlushFillsGapFromCoarseWindow(t *testing.T) {
	for _, engine := range teststore.Engines {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			fx := setup(t, engine)
			// Aligned to the coarse 10 s buckets.
			now := time.Now().UTC().Truncate(10 * time.Second)
			// Flushed long ago up to now-40min (the last stored snapshot).
			mark := now.Add(-40 * time.Minute)
			if err := fx.st.InsertMetricSnapshots(ctx, []store.MetricSnapshot{{
				CapsuleID: fx.cap.ID, TeamID: fx.cap.TeamID, TS: mark, IntervalMS: 1000, CPUCores: 1, MemBytes: 1 << 20,
			}}); err != nil {
				t.Fatal(err)
			}
			// Samples 30-20 min ago (only in the coarse window) and over
			// the last two minutes.
			fx.add(now.Add(-30*time.Minute), now.Add(-20*time.Minute), 50, 128<<20)
			fx.add(now.Add(-2*time.Minute), now.Add(-5*time.Second), 50, 128<<20)
			f := &metricsflush.Flusher{Store: fx.st, Agents: fx.pool}
			n, err := f.FlushOnce(ctx)
			// 60 coarse buckets of 10 s, plus 115 fine buckets of 1 s,
			// minus coarse buckets that overlap the fine window (none).
			if err != nil || n != 60+115 {
				t.Fatalf("flush stored %d, %v; want 175", n, err)
			}
			if fx.agent.calls[pb.MetricsWindow_METRICS_WINDOW_2H] != 1 {
				t.Fatalf("coarse window asked %d times", fx.agent.calls[pb.MetricsWindow_METRICS_WINDOW_2H])
			}
			got := fx.sum(t)
			wantCPU := 1.0/60 + 10 + 115.0/60 // old snapshot + 10 min + 115 s, all at 1 core
			if !near(got.CPUMinutes, wantCPU) {
				t.Fatalf("cpu minutes = %v, want %v", got.CPUMinutes, wantCPU)
			}
			if n, err := f.FlushOnce(ctx); err != nil || n != 0 {
				t.Fatalf("second flush stored %d, %v", n, err)
			}
			if fx.agent.calls[pb.MetricsWindow_METRICS_WINDOW_2H] != 1 {
				t.Fatal("coarse window asked again without a gap")
			}
		})
	}
}

// TestFlushSkipsVanishedCapsule: a capsule its agent no longer knows is
// not an error (the reconciler deals with it).
func TestFlushSkipsVanishedCapsule(t *testing.T) {
	fx := setup(t, teststore.SQLite)
	fx.agent.mu.Lock()
	delete(fx.agent.series, fx.cap.ID)
	fx.agent.mu.Unlock()
	f := &metricsflush.Flusher{Store: fx.st, Agents: fx.pool}
	if n, err := f.FlushOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("flush = %d, %v", n, err)
	}
}
