package wrenn_test

import (
	"context"
	"sort"
	"testing"
	"time"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// BenchmarkCreateToFirstExec measures, through the public API, the time
// from Create to the end of a first Exec of `echo` in the new capsule,
// next to the same Exec in an already running capsule (the baseline,
// measured in the same run), and reports p50s and their ratio.
func BenchmarkCreateToFirstExec(b *testing.B) {
	ctx := context.Background()
	c, err := wrenn.New(wrennURL, wrennKey)
	if err != nil {
		b.Fatal(err)
	}
	warm, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Delete(ctx, warm.ID) //nolint:errcheck // best effort
	echo := wrenn.ExecRequest{Cmd: "echo", Args: []string{"hello"}}
	var cold, base []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Exec(ctx, warm.ID, echo); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(t0))

		t1 := time.Now()
		capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
		if err != nil {
			b.Fatal(err)
		}
		res, err := c.Exec(ctx, capsule.ID, echo)
		if err != nil || res.Stdout != "hello\n" {
			b.Fatalf("exec: %+v %v", res, err)
		}
		cold = append(cold, time.Since(t1))
		if err := c.Delete(ctx, capsule.ID); err != nil {
			b.Fatal(err)
		}
	}
	p50 := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	coldP50, baseP50 := p50(cold), p50(base)
	b.ReportMetric(float64(coldP50.Microseconds())/1000, "create_exec_p50_ms")
	b.ReportMetric(float64(baseP50.Microseconds())/1000, "exec_p50_ms")
	b.ReportMetric(float64(coldP50)/float64(baseP50), "create_exec/exec")
}
