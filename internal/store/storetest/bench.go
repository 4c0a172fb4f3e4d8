package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// BenchListCapsules measures listing a team's capsules with n capsules in
// the store (the API's GET /v1/capsules): the first page of 100 and a full
// walk in pages of 1000. It reports ops/s and rows/s, and as the baseline
// measured in the same run, the cost of a single-capsule lookup
// (x_point_lookup: how many point lookups one list call costs).
func BenchListCapsules(b *testing.B, newStore NewStore, n int) {
	s := newStore(b)
	ctx := b.Context()
	team, err := s.CreateTeam(ctx, store.Team{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	base := time.Now().Add(-24 * time.Hour)
	var probe string
	for i := range n {
		c, err := s.CreateCapsule(ctx, store.Capsule{
			TeamID: team.ID, TemplateID: "tpl-base", Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 512,
			DiskSizeMB: 5120, TimeoutSec: 300, Env: map[string]string{"K": "v"}, AccessTokenHash: "h",
			CreatedAt: base.Add(time.Duration(i) * time.Millisecond),
		})
		if err != nil {
			b.Fatal(err)
		}
		probe = c.ID
	}

	// Fresh statistics, as autovacuum would have them in steady state.
	if a, ok := s.(Analyzer); ok {
		if err := a.Analyze(ctx); err != nil {
			b.Fatal(err)
		}
	}

	// Baseline: point lookups of one capsule.
	const baseIters = 2000
	start := time.Now()
	for range baseIters {
		if _, err := s.GetCapsule(ctx, team.ID, probe); err != nil {
			b.Fatal(err)
		}
	}
	point := time.Since(start) / baseIters

	b.Run("page100", func(b *testing.B) {
		rows := 0
		for b.Loop() {
			page, _, err := s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Limit: 100})
			if err != nil {
				b.Fatal(err)
			}
			rows += len(page)
		}
		report(b, rows, point)
	})
	b.Run("walk_all", func(b *testing.B) {
		rows := 0
		for b.Loop() {
			cursor := ""
			for {
				page, next, err := s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Limit: 1000, Cursor: cursor})
				if err != nil {
					b.Fatal(err)
				}
				rows += len(page)
				if next == "" {
					break
				}
				cursor = next
			}
		}
		if rows != b.N*n {
			b.Fatalf("walked %d rows in %d walks, want %d each", rows, b.N, n)
		}
		report(b, rows, point)
	})
}

// Analyzer is implemented by stores that can refresh planner statistics.
type Analyzer interface {
	Analyze(ctx context.Context) error
}

func report(b *testing.B, rows int, point time.Duration) {
	el := b.Elapsed()
	if el <= 0 {
		return
	}
	perOp := el / time.Duration(b.N)
	b.ReportMetric(float64(b.N)/el.Seconds(), "ops/s")
	b.ReportMetric(float64(rows)/el.Seconds(), "rows/s")
	b.ReportMetric(float64(perOp)/float64(point), "x_point_lookup")
}
