package events

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// BenchmarkSSEFanout measures how long one event takes to reach every
// follower (Follow: the code behind GET /v1/events/stream, minus the HTTP
// write) with 100 followers of the team, against 1 follower in the same
// run (the baseline). The event is stored by a Recorder (SQLite) and the
// hub is woken, as on the replica that wrote it. Reports p50/p99 (ms).
func BenchmarkSSEFanout(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(map[int]string{1: "subscribers=1(baseline)", 100: "subscribers=100"}[n], func(b *testing.B) {
			st := teststore.Open(b, teststore.SQLite)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			team, _ := st.CreateTeam(ctx, store.Team{Name: "bench"})
			hub := &Hub{Store: st, Interval: time.Second}
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			wg.Go(func() { hub.Run(ctx) })
			rec := &Recorder{Store: st, OnAppend: func(store.Event) { hub.Notify() }}
			got := make(chan time.Time, n)
			for range n {
				wg.Go(func() {
					_ = Follow(ctx, hub, st, team.ID, store.EventFilter{}, time.Minute,
						func(store.Event) error { got <- time.Now(); return nil }, func() error { return nil })
				})
			}
			for hub.Subscribers() < n {
				time.Sleep(time.Millisecond)
			}
			var lat []float64
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				rec.Emit(ctx, team.ID, CapsuleCreated, "cl-x", nil)
				var last time.Time
				for range n {
					last = <-got
				}
				lat = append(lat, float64(last.Sub(start).Microseconds())/1000)
			}
			b.StopTimer()
			s := slices.Clone(lat)
			slices.Sort(s)
			b.ReportMetric(s[(len(s)-1)*50/100], "all-p50-ms")
			b.ReportMetric(s[(len(s)-1)*99/100], "all-p99-ms")
		})
	}
}
