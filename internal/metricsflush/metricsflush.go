// Package metricsflush moves capsule metrics from the host agents' ring
// buffers into the store: a worker periodically asks each running
// capsule's agent for its recent samples (GetCapsuleMetrics) and inserts
// every completed bucket it has not stored yet as a store.MetricSnapshot,
// which the usage rollups (internal/usage) then aggregate.
//
// Invariants:
//   - A bucket is stored at most once: the flusher keeps, per capsule, the
//     end of the last stored bucket (its watermark) and only stores
//     buckets starting at or after it. After a restart the watermark is
//     recovered from the newest stored snapshot, so a restart never counts
//     a bucket twice. Run one flusher per deployment (several replicas
//     would each store the same buckets).
//   - Only completed buckets are stored (a bucket's end must be at least
//     Grace before now), so a bucket still filling is never stored with a
//     partial average.
//   - When the watermark is older than the fine (1 s) window, the gap is
//     filled from the coarser (10 s) window, so a flusher that fell behind
//     by up to two hours loses nothing.
//   - Snapshot units: IntervalMS is the bucket's length, TS its end,
//     CPUCores = cpu_used_pct × cpu_count / 100 (the capsule's vCPUs when
//     the agent reports no count), MemBytes the guest's memory in use.
package metricsflush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Store is the part of the store the flusher uses.
type Store interface {
	ListHosts(ctx context.Context) ([]store.Host, error)
	ListCapsulesByHost(ctx context.Context, hostID string) ([]store.Capsule, error)
	ListCapsuleMetricSnapshots(ctx context.Context, teamID, capsuleID string, from, to time.Time) ([]store.MetricSnapshot, error)
	InsertMetricSnapshots(ctx context.Context, snaps []store.MetricSnapshot) error
}

// Agents hands out host agent clients (internal/api/agents.Pool does).
type Agents interface {
	Client(h store.Host) hostagentv1connect.HostAgentServiceClient
}

// Flusher copies agents' metric samples into the store. Configure the
// exported fields before the first call; the zero values take defaults.
type Flusher struct {
	Store  Store
	Agents Agents
	Log    *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Grace is how long after its end a bucket counts as complete
	// (default 2 s; it also absorbs small clock skew between hosts).
	Grace time.Duration
	// CallTimeout bounds one GetCapsuleMetrics call (default 10 s).
	CallTimeout time.Duration
	// Gate, when set, is asked before each flush in Run; a flush runs
	// only when it answers true (lease.Keeper.Gate: one replica flushes).
	Gate func(context.Context) bool

	mu    sync.Mutex
	marks map[string]time.Time // capsule ID → end of the last stored bucket
}

// maxLookback bounds how far back the flusher looks for a restart
// watermark and fills gaps: the agents' 10 s window.
const maxLookback = 2 * time.Hour

func (f *Flusher) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Flusher) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Run flushes every interval until ctx ends.
func (f *Flusher) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if f.Gate != nil && !f.Gate(ctx) {
				continue
			}
			n, err := f.FlushOnce(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				f.log().Warn("metrics flush incomplete", "stored", n, "err", err)
			case n > 0:
				f.log().Debug("metrics flushed", "stored", n)
			}
		}
	}
}

// FlushOnce stores the new completed buckets of every running capsule on
// every reachable host and returns how many snapshots it stored. A host or
// capsule that fails is skipped (and retried next time); the errors are
// joined in the result.
func (f *Flusher) FlushOnce(ctx context.Context) (int, error) {
	hosts, err := f.Store.ListHosts(ctx)
	if err != nil {
		return 0, fmt.Errorf("metricsflush: list hosts: %w", err)
	}
	var (
		total int
		errs  []error
		live  = map[string]bool{}
	)
	for _, h := range hosts {
		if h.Status == store.HostUnavailable {
			continue
		}
		caps, err := f.Store.ListCapsulesByHost(ctx, h.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("host %s: list capsules: %w", h.ID, err))
			continue
		}
		cl := f.Agents.Client(h)
		for _, c := range caps {
			if c.Status != store.CapsuleRunning {
				continue
			}
			live[c.ID] = true
			n, err := f.flushCapsule(ctx, cl, c)
			total += n
			if err != nil {
				errs = append(errs, fmt.Errorf("capsule %s on host %s: %w", c.ID, h.ID, err))
			}
			if ctx.Err() != nil {
				return total, errors.Join(append(errs, ctx.Err())...)
			}
		}
	}
	// Forget capsules that stopped running; a resumed capsule recovers its
	// watermark from the store.
	f.mu.Lock()
	for id := range f.marks {
		if !live[id] {
			delete(f.marks, id)
		}
	}
	f.mu.Unlock()
	return total, errors.Join(errs...)
}

// watermark returns the end of the capsule's last stored bucket, reading
// it from the store the first time.
func (f *Flusher) watermark(ctx context.Context, c store.Capsule, now time.Time) (time.Time, error) {
	f.mu.Lock()
	m, ok := f.marks[c.ID]
	f.mu.Unlock()
	if ok {
		return m, nil
	}
	snaps, err := f.Store.ListCapsuleMetricSnapshots(ctx, c.TeamID, c.ID, now.Add(-maxLookback-time.Minute), now.Add(time.Hour))
	if err != nil {
		return time.Time{}, fmt.Errorf("read watermark: %w", err)
	}
	for _, s := range snaps {
		if s.TS.After(m) {
			m = s.TS
		}
	}
	return m, nil
}

func (f *Flusher) setWatermark(id string, t time.Time) {
	f.mu.Lock()
	if f.marks == nil {
		f.marks = map[string]time.Time{}
	}
	if t.After(f.marks[id]) {
		f.marks[id] = t
	}
	f.mu.Unlock()
}

type bucket struct {
	start time.Time
	res   time.Duration
	p     *pb.MetricPoint
}

func (f *Flusher) fetch(ctx context.Context, cl hostagentv1connect.HostAgentServiceClient, id string, w pb.MetricsWindow) ([]bucket, error) {
	timeout := f.CallTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cl.GetCapsuleMetrics(cctx, connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: id, Window: w}))
	if err != nil {
		return nil, err
	}
	res := time.Duration(resp.Msg.GetResolutionSec()) * time.Second
	if res <= 0 {
		return nil, fmt.Errorf("agent reported resolution %d s", resp.Msg.GetResolutionSec())
	}
	out := make([]bucket, 0, len(resp.Msg.GetPoints()))
	for _, p := range resp.Msg.GetPoints() {
		out = append(out, bucket{start: time.UnixMilli(p.GetTsMs()).UTC(), res: res, p: p})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out, nil
}

func (f *Flusher) flushCapsule(ctx context.Context, cl hostagentv1connect.HostAgentServiceClient, c store.Capsule) (int, error) {
	now := f.now().UTC()
	grace := f.Grace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	mark, err := f.watermark(ctx, c, now)
	if err != nil {
		return 0, err
	}
	fine, err := f.fetch(ctx, cl, c.ID, pb.MetricsWindow_METRICS_WINDOW_10M)
	if connect.CodeOf(err) == connect.CodeNotFound {
		return 0, nil // gone from its host; the reconciler handles it
	}
	if err != nil {
		return 0, fmt.Errorf("get metrics: %w", err)
	}
	var picked []bucket
	// Fill a gap older than the fine window from the coarse one.
	if !mark.IsZero() && now.Sub(mark) <= maxLookback && (len(fine) == 0 || fine[0].start.After(mark)) {
		coarse, err := f.fetch(ctx, cl, c.ID, pb.MetricsWindow_METRICS_WINDOW_2H)
		if err != nil {
			return 0, fmt.Errorf("get coarse metrics: %w", err)
		}
		limit := now.Add(-grace)
		if len(fine) > 0 {
			limit = fine[0].start
		}
		for _, b := range coarse {
			if !b.start.Before(mark) && !b.start.Add(b.res).After(limit) {
				picked = append(picked, b)
			}
		}
	}
	for _, b := range fine {
		if !b.start.Before(mark) && !b.start.Add(b.res).After(now.Add(-grace)) {
			picked = append(picked, b)
		}
	}
	if len(picked) == 0 {
		f.setWatermark(c.ID, mark)
		return 0, nil
	}
	snaps := make([]store.MetricSnapshot, 0, len(picked))
	for _, b := range picked {
		cpus := float64(b.p.GetCpuCount())
		if cpus <= 0 {
			cpus = float64(c.VCPUs)
		}
		snaps = append(snaps, store.MetricSnapshot{
			CapsuleID: c.ID, TeamID: c.TeamID, TS: store.Truncate(b.start.Add(b.res)),
			IntervalMS: b.res.Milliseconds(), CPUCores: b.p.GetCpuUsedPct() * cpus / 100,
			MemBytes: int64(min(b.p.GetMemUsedBytes(), 1<<62)), //nolint:gosec // clamped
		})
	}
	if err := f.Store.InsertMetricSnapshots(ctx, snaps); err != nil {
		return 0, fmt.Errorf("insert snapshots: %w", err)
	}
	f.setWatermark(c.ID, snaps[len(snaps)-1].TS)
	return len(snaps), nil
}
