package usage

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

func TestParseRange(t *testing.T) {
	cases := []struct {
		from, to string
		ok       bool
	}{
		{"2026-01-01", "2026-01-01", true},
		{"2026-01-01", "2026-04-02", true},  // 92 days inclusive
		{"2026-01-01", "2026-04-03", false}, // 93 days
		{"2026-01-02", "2026-01-01", false},
		{"2026-1-1", "2026-01-02", false},
		{"yesterday", "2026-01-02", false},
		{"2026-01-01", "", false},
		{"2026-02-30", "2026-03-01", false},
	}
	for _, tc := range cases {
		t.Run(tc.from+"_"+tc.to, func(t *testing.T) {
			_, _, err := ParseRange(tc.from, tc.to)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadRange) {
				t.Fatalf("err = %v, want ErrBadRange", err)
			}
		})
	}
}

// randomSamples makes snapshots for teams over days starting at start,
// with timestamps expressed in assorted time zones and clustered around
// midnight so that day boundaries matter.
func randomSamples(r *rand.Rand, teams []string, start time.Time, days, n int) []store.MetricSnapshot {
	zones := []*time.Location{time.UTC, time.FixedZone("UTC+14", 14*3600), time.FixedZone("UTC-12", -12*3600), time.FixedZone("IST", 5*3600+1800)}
	out := make([]store.MetricSnapshot, 0, n)
	for i := range n {
		var off time.Duration
		if i%4 == 0 { // near a midnight
			d := time.Duration(r.IntN(days)+1) * 24 * time.Hour
			off = d + time.Duration(r.IntN(2000)-1000)*time.Millisecond
		} else {
			off = time.Duration(r.Int64N(int64(days) * int64(24*time.Hour)))
		}
		ts := start.Add(off).Truncate(time.Microsecond)
		out = append(out, store.MetricSnapshot{
			CapsuleID:  "cl-test",
			TeamID:     teams[r.IntN(len(teams))],
			TS:         ts.In(zones[r.IntN(len(zones))]),
			IntervalMS: int64(1000 * (1 + r.IntN(60))),
			CPUCores:   r.Float64() * 4,
			MemBytes:   r.Int64N(8 << 30),
		})
	}
	return out
}

// bruteForce recomputes per (team, UTC day) totals straight from samples.
func bruteForce(samples []store.MetricSnapshot) map[string]map[string][2]float64 {
	out := map[string]map[string][2]float64{}
	for _, s := range samples {
		day := s.TS.UTC().Format(time.DateOnly)
		if out[s.TeamID] == nil {
			out[s.TeamID] = map[string][2]float64{}
		}
		v := out[s.TeamID][day]
		mins := float64(s.IntervalMS) / 60000
		v[0] += s.CPUCores * mins
		v[1] += float64(s.MemBytes) / 1048576 * mins
		out[s.TeamID][day] = v
	}
	return out
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-3*math.Max(1, math.Abs(b)) }

func TestRollupMatchesBruteForce(t *testing.T) {
	for _, eng := range teststore.Engines {
		t.Run(eng, func(t *testing.T) {
			st := teststore.Open(t, eng)
			ctx := testutil.Context(t, testutil.Long)
			r := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
			start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
			teams := []string{"team-a", "team-b", "team-c"}
			n := 3000
			if testing.Short() {
				n = 600
			}
			samples := randomSamples(r, teams, start, 5, n)
			if err := st.InsertMetricSnapshots(ctx, samples); err != nil {
				t.Fatal(err)
			}
			now := start.AddDate(0, 0, 5).Add(13 * time.Hour) // "today" = day 5, partially
			svc := &Service{Store: st, Now: func() time.Time { return now }, Lookback: 6}

			for pass := range 2 { // the second pass must change nothing
				if err := svc.RollupCompleted(ctx); err != nil {
					t.Fatal(err)
				}
				want := bruteForce(samples)
				for _, team := range teams {
					rep, err := svc.Query(ctx, team, start, now)
					if err != nil {
						t.Fatal(err)
					}
					if len(rep.Days) != 6 {
						t.Fatalf("pass %d: %d days, want 6", pass, len(rep.Days))
					}
					var totCPU, totRAM float64
					for _, d := range rep.Days {
						w := want[team][d.Date]
						if !near(d.CPUMinutes, w[0]) || !near(d.RAMMBMinutes, w[1]) {
							t.Errorf("pass %d %s %s: got cpu=%v ram=%v, want cpu=%v ram=%v", pass, team, d.Date, d.CPUMinutes, d.RAMMBMinutes, w[0], w[1])
						}
						totCPU += w[0]
						totRAM += w[1]
						if d.Live != (d.Date == now.Format(time.DateOnly)) {
							t.Errorf("%s live=%v", d.Date, d.Live)
						}
					}
					if !near(rep.Totals.CPUMinutes, totCPU) || !near(rep.Totals.RAMMBMinutes, totRAM) {
						t.Errorf("totals %v/%v, want %v/%v", rep.Totals.CPUMinutes, rep.Totals.RAMMBMinutes, totCPU, totRAM)
					}
				}
			}
			// Completed days really are in daily_usage (not just computed live).
			rows, err := st.ListDailyUsage(ctx, "team-a", start, start.AddDate(0, 0, 4))
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 5 {
				t.Fatalf("daily_usage has %d rows for team-a, want 5", len(rows))
			}
			// Today is never rolled up: it would freeze a partial day.
			today, err := st.ListDailyUsage(ctx, "team-a", start.AddDate(0, 0, 5), start.AddDate(0, 0, 5))
			if err != nil || len(today) != 0 {
				t.Fatalf("today was rolled up: %v %v", today, err)
			}
		})
	}
}

func TestQueryIsolatesTeams(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Long)
	now := time.Date(2026, 5, 10, 12, 0, 0, 0, time.UTC)
	snaps := []store.MetricSnapshot{
		{CapsuleID: "cl-1", TeamID: "team-a", TS: now.Add(-time.Hour), IntervalMS: 60000, CPUCores: 2, MemBytes: 1 << 30},
		{CapsuleID: "cl-2", TeamID: "team-b", TS: now.Add(-time.Hour), IntervalMS: 60000, CPUCores: 1, MemBytes: 1 << 20},
	}
	if err := st.InsertMetricSnapshots(ctx, snaps); err != nil {
		t.Fatal(err)
	}
	svc := &Service{Store: st, Now: func() time.Time { return now }}
	rep, err := svc.Query(ctx, "team-a", now, now)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Totals.CPUMinutes != 2 || rep.Totals.RAMMBMinutes != 1024 {
		t.Fatalf("team-a totals = %+v, want cpu 2, ram 1024 (team-b excluded)", rep.Totals)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { (&Service{Store: st}).Run(ctx, time.Millisecond); close(done) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(testutil.Short):
		t.Fatal("Run did not stop")
	}
}
