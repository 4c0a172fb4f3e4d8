package cli

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestBenchPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		in      []time.Duration
		p, want float64
	}{
		{nil, 50, 0},
		{ms(7), 99, 7},
		{ms(5, 1, 3, 2, 4), 50, 3},
		{ms(5, 1, 3, 2, 4), 99, 5},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 50, 5},
	}
	for _, tt := range tests {
		if got := percentile(tt.in, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
		}
	}
	if r := rateRow("x", []float64{300, 100, 200}); r.P50 != 200 || r.P99 != 100 || r.N != 3 {
		t.Errorf("rateRow = %+v", r)
	}
}

// TestBenchEvaluate: ratios against the same-run baselines and the issue's
// targets, and the table.
func TestBenchEvaluate(t *testing.T) {
	b := &bench{f: benchFlags{concurrency: 30, memoryMB: 1024}}
	b.rows = []benchRow{
		{Scenario: "baseline: local fork/exec /bin/true", N: 10, Unit: "ms", P50: 1},
		{Scenario: "baseline: runc run /bin/true", Unit: "ms", Note: "n/a: not root on this machine"},
		{Scenario: "baseline: pipe → loopback TCP copy", N: 3, Unit: "MiB/s", P50: 1000},
		{Scenario: "baseline: loopback TCP copy", N: 3, Unit: "MiB/s", P50: 2000},
		{Scenario: "baseline: loopback TCP copy into a file", N: 3, Unit: "MiB/s", P50: 1000},
		{Scenario: "baseline: disk write + fsync", N: 3, Unit: "MiB/s", P50: 500},
		{Scenario: "create → first exec, cold", N: 4, Unit: "ms", P50: 90},
		{Scenario: "create → first exec, warm", N: 8, Unit: "ms", P50: 4.5},
		{Scenario: "delete (answer)", N: 8, Unit: "ms", P50: 25},
		{Scenario: "exec /bin/true (API round trip)", N: 8, Unit: "ms", P50: 4},
		{Scenario: "stdout streaming", N: 3, Unit: "MiB/s", P50: 950},
		{Scenario: "file upload", N: 3, Unit: "MiB/s", P50: 700},
		{Scenario: "file download", N: 3, Unit: "MiB/s", P50: 1700},
		{Scenario: "pause to disk (1024 MiB used)", N: 1, Unit: "ms", P50: 1000},
		{Scenario: "resume from disk → first exec (1024 MiB)", N: 1, Unit: "ms", P50: 400},
		{Scenario: "30 concurrent creates → first exec", N: 30, Unit: "ms", P50: 500, Note: "30 of 30 succeeded"},
	}
	b.evaluate()
	want := map[string]struct {
		ratio float64
		met   string
	}{
		"create → first exec, cold":                {0, "unset"},
		"create → first exec, warm":                {4.5, "true"},
		"delete (answer)":                          {0, "false"},
		"exec /bin/true (API round trip)":          {4, "true"},
		"stdout streaming":                         {0.95, "true"},
		"file upload":                              {0.7, "false"},
		"file download":                            {0.85, "true"},
		"pause to disk (1024 MiB used)":            {2.05, "true"},
		"resume from disk → first exec (1024 MiB)": {0, "false"},
		"30 concurrent creates → first exec":       {0, "true"},
	}
	for name, w := range want {
		r := b.row(name)
		met := "unset"
		if r.Met != nil {
			met = map[bool]string{true: "true", false: "false"}[*r.Met]
		}
		if r.Ratio != w.ratio || met != w.met {
			t.Errorf("%s: ratio %v met %s, want %v %s (%+v)", name, r.Ratio, met, w.ratio, w.met, *r)
		}
	}
	if r := b.row("create → first exec, cold"); !strings.Contains(r.Note, "baseline n/a") {
		t.Errorf("cold create without a runc baseline: note %q", r.Note)
	}
	var out bytes.Buffer
	printBench(&out, b.rows)
	for _, s := range []string{"SCENARIO", "create → first exec, warm", "4.50 ms", "950 MiB/s", "NO", "≤ 1.5× fork/exec + 3 ms"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, out.String())
		}
	}
}

// TestBenchBaselines: the local baselines measure real work.
func TestBenchBaselines(t *testing.T) {
	ctx := context.Background()
	b := &bench{f: benchFlags{dir: t.TempDir()}}
	const n = 8 << 20
	for name, fn := range map[string]func(context.Context, int64) (time.Duration, error){
		"tcp":      func(ctx context.Context, n int64) (time.Duration, error) { return tcpCopy(ctx, n, "") },
		"tcp file": func(ctx context.Context, n int64) (time.Duration, error) { return tcpCopy(ctx, n, b.f.dir) },
		"pipe":     b.pipeTCP,
		"disk":     b.diskWrite,
	} {
		d, err := fn(ctx, n)
		if err != nil || d <= 0 {
			t.Errorf("%s: %v, %v", name, d, err)
		}
	}
}

// TestBenchOnlyUnknown: --only names a scenario that does not exist: a
// clear error before anything runs.
func TestBenchOnlyUnknown(t *testing.T) {
	_, err := runBench(context.Background(), nil, clientConfig{}, benchFlags{only: []string{"create-warm", "nope"}, concurrency: 1, memoryMB: 1}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `unknown scenario "nope"`) || !strings.Contains(err.Error(), "create-warm") {
		t.Fatalf("err = %v", err)
	}
}
