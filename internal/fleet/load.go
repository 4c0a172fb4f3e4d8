package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// LoadOptions bound a load run.
type LoadOptions struct {
	// Clients cycle create → exec → pause → resume → delete at once
	// (default 50).
	Clients int
	// Duration of the run (default 1 minute); cycles in flight finish.
	Duration time.Duration
	// Template of the capsules (default "minimal").
	Template string
}

// LoadReport is what a load run measured.
type LoadReport struct {
	Clients  int
	Duration time.Duration
	Cycles   int
	// Steps holds each step's latencies.
	Steps map[string]*StepStats
	// Errors counts failed steps by "step: status"; CapacityErrors are
	// 503s for no capacity (expected when the hosts are full).
	Errors         map[string]int
	CapacityErrors int
	// PostgresConns is the most connections the fleet's database had.
	PostgresConns int
}

// StepStats are one step's latencies.
type StepStats struct {
	N        int
	P50, P99 time.Duration
	lat      []time.Duration
}

// Steps of a load cycle, in order.
var loadSteps = []string{"create", "exec", "pause", "resume", "delete"}

// RunLoad drives f with o.Clients concurrent clients for o.Duration and
// reports throughput, per-step p50/p99, errors and PostgreSQL connections.
func RunLoad(ctx context.Context, f *Fleet, o LoadOptions) (*LoadReport, error) {
	if o.Clients == 0 {
		o.Clients = 50
	}
	if o.Duration == 0 {
		o.Duration = time.Minute
	}
	if o.Template == "" {
		o.Template = "minimal"
	}
	rep := &LoadReport{Clients: o.Clients, Steps: map[string]*StepStats{}, Errors: map[string]int{}}
	for _, s := range loadSteps {
		rep.Steps[s] = &StepStats{}
	}
	var mu sync.Mutex
	record := func(step string, d time.Duration, err error) bool {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			st := rep.Steps[step]
			st.N++
			st.lat = append(st.lat, d)
			return true
		}
		var ae *APIError
		switch {
		case errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable && strings.Contains(ae.Body, "capacity"):
			rep.CapacityErrors++
		case errors.As(err, &ae):
			rep.Errors[fmt.Sprintf("%s: %d %s", step, ae.Status, clip(ae.Body))]++
		default:
			rep.Errors[fmt.Sprintf("%s: %v", step, err)]++
		}
		return false
	}
	pgDone := make(chan struct{})
	pgCtx, stopPG := context.WithCancel(ctx)
	go func() {
		defer close(pgDone)
		rep.PostgresConns = f.watchConnections(pgCtx)
	}()
	deadline := time.Now().Add(o.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	for range o.Clients {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				var cp capsuleJSON
				err := f.AdminDo(ctx, http.MethodPost, "/v1/capsules", map[string]any{"template": o.Template, "memory_mb": 128, "disk_size_mb": 512, "timeout_sec": 600}, &cp)
				if !record("create", time.Since(t0), err) {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				id := cp.ID
				for _, s := range []struct {
					name, path string
					body       any
				}{
					{"exec", "/exec", map[string]any{"cmd": "echo", "args": []string{"hi"}}},
					{"pause", "/pause", map[string]any{}},
					{"resume", "/resume", map[string]any{}},
				} {
					t0 = time.Now()
					err := f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+id+s.path, s.body, nil)
					if !record(s.name, time.Since(t0), err) {
						break
					}
				}
				t0 = time.Now()
				err = f.AdminDo(ctx, http.MethodDelete, "/v1/capsules/"+id, nil, nil)
				record("delete", time.Since(t0), err)
				mu.Lock()
				rep.Cycles++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep.Duration = time.Since(start)
	stopPG()
	<-pgDone
	for _, st := range rep.Steps {
		if len(st.lat) > 0 {
			slices.Sort(st.lat)
			st.P50, st.P99 = st.lat[len(st.lat)/2], st.lat[len(st.lat)*99/100]
		}
	}
	return rep, nil
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}

// watchConnections samples the fleet database's connections every 250 ms
// until ctx ends and returns the highest count.
func (f *Fleet) watchConnections(ctx context.Context) int {
	conn, err := pgx.Connect(ctx, f.o.PostgresDSN)
	if err != nil {
		return -1
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	most := 0
	for {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", f.dbName).Scan(&n); err == nil {
			most = max(most, n)
		}
		select {
		case <-ctx.Done():
			return most
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// String is the report as a table.
func (r *LoadReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d clients, %v: %d cycles (%.1f cycles/s), %d capacity refusals, PostgreSQL connections at most %d\n",
		r.Clients, r.Duration.Round(time.Second), r.Cycles, float64(r.Cycles)/r.Duration.Seconds(), r.CapacityErrors, r.PostgresConns)
	fmt.Fprintf(&b, "%-8s %7s %10s %10s\n", "step", "n", "p50", "p99")
	for _, s := range loadSteps {
		st := r.Steps[s]
		fmt.Fprintf(&b, "%-8s %7d %10v %10v\n", s, st.N, st.P50.Round(100*time.Microsecond), st.P99.Round(100*time.Microsecond))
	}
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "error %s: %d\n", k, r.Errors[k])
	}
	return b.String()
}

// ErrorCount is the number of failed steps that were not capacity refusals.
func (r *LoadReport) ErrorCount() int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}
