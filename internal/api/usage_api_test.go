package api_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/usage"
)

// TestCapsuleUsageAcrossDays checks GET /v1/capsules/usage against a
// brute-force sum of random snapshots over three UTC days (rolled-up days
// plus live today, snapshots on both sides of midnight), the rollup's
// idempotency as seen through the API, team scoping and the 92-day limit.
func TestCapsuleUsageAcrossDays(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		e := newEnv(t, st)
		owner := e.signup("usage@example.com")
		other := e.signup("other@example.com")
		c := e.insertCapsule(owner.team, "")
		oc := e.insertCapsule(other.team, "")

		today := store.Day(time.Now())
		rng := rand.New(rand.NewPCG(7, 11)) //nolint:gosec // deterministic test data
		want := map[string][2]float64{}
		var snaps []store.MetricSnapshot
		for d := 2; d >= 0; d-- {
			day := today.AddDate(0, 0, -d)
			for i := range 40 {
				// Spread over the day, with some right at its edges.
				var at time.Time
				switch i {
				case 0:
					at = day.Add(500 * time.Microsecond)
				case 1:
					at = day.Add(24*time.Hour - time.Millisecond)
				default:
					at = day.Add(time.Duration(rng.Int64N(int64(24 * time.Hour))))
				}
				if d == 0 && at.After(time.Now()) {
					at = time.Now().Add(-time.Duration(rng.Int64N(int64(time.Minute))) - time.Second)
					if store.Day(at) != day {
						continue
					}
				}
				sn := store.MetricSnapshot{
					CapsuleID: c.ID, TeamID: owner.team, TS: store.Truncate(at), IntervalMS: 1000 * (1 + rng.Int64N(60)),
					CPUCores: float64(rng.IntN(400)) / 100, MemBytes: (1 + rng.Int64N(2048)) << 20,
				}
				snaps = append(snaps, sn, store.MetricSnapshot{
					CapsuleID: oc.ID, TeamID: other.team, TS: sn.TS, IntervalMS: sn.IntervalMS, CPUCores: 8, MemBytes: 1 << 30,
				})
				key := store.Day(sn.TS).Format(time.DateOnly)
				mins := float64(sn.IntervalMS) / 60000
				w := want[key]
				w[0] += sn.CPUCores * mins
				w[1] += float64(sn.MemBytes) / (1 << 20) * mins
				want[key] = w
			}
		}
		if err := st.InsertMetricSnapshots(ctx, snaps); err != nil {
			t.Fatal(err)
		}
		svc := &usage.Service{Store: st}
		for range 2 { // running the worker twice changes nothing
			if err := svc.RollupCompleted(ctx); err != nil {
				t.Fatal(err)
			}
		}

		from, to := today.AddDate(0, 0, -2).Format(time.DateOnly), today.Format(time.DateOnly)
		rep := e.want(e.do("GET", "/v1/capsules/usage?from="+from+"&to="+to, owner.token, nil), 200).json(t)
		days := rep["days"].([]any)
		if len(days) != 3 {
			t.Fatalf("days = %v", days)
		}
		var totCPU, totRAM float64
		for _, d := range days {
			m := d.(map[string]any)
			w := want[m["date"].(string)]
			if !close4(m["cpu_minutes"].(float64), w[0]) || !close4(m["ram_mb_minutes"].(float64), w[1]) {
				t.Fatalf("%s: got %v, want cpu %.4f ram %.4f", m["date"], m, w[0], w[1])
			}
			if live, _ := m["live"].(bool); live != (m["date"] == to) {
				t.Fatalf("%s: live = %v", m["date"], live)
			}
			totCPU += w[0]
			totRAM += w[1]
		}
		totals := rep["totals"].(map[string]any)
		if !close4(totals["cpu_minutes"].(float64), totCPU) || !close4(totals["ram_mb_minutes"].(float64), totRAM) {
			t.Fatalf("totals = %v, want %.4f / %.4f", totals, totCPU, totRAM)
		}

		// Exactly 92 days is allowed; 93 is not.
		start92 := today.AddDate(0, 0, -91).Format(time.DateOnly)
		if n := len(e.want(e.do("GET", "/v1/capsules/usage?from="+start92+"&to="+to, owner.token, nil), 200).json(t)["days"].([]any)); n != 92 {
			t.Fatalf("92-day range has %d days", n)
		}
		start93 := today.AddDate(0, 0, -92).Format(time.DateOnly)
		if r := e.want(e.do("GET", "/v1/capsules/usage?from="+start93+"&to="+to, owner.token, nil), 400); r.str(t, "code") != "invalid_argument" || r.str(t, "message") == "" {
			t.Fatalf("93 days: %s", r.body)
		}
		for _, q := range []string{"from=" + from, "to=" + to, "from=2026-13-01&to=2026-13-02", "from=" + to + "&to=" + from} {
			e.want(e.do("GET", "/v1/capsules/usage?"+q, owner.token, nil), 400)
		}
		e.want(e.do("GET", "/v1/capsules/usage?from="+from+"&to="+to, "", nil), 401)
	})
}

func close4(got, want float64) bool {
	d := got - want
	return d < 1e-3 && d > -1e-3
}
