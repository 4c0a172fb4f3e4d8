package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkDashboard runs web/e2e/bench.mjs (headless Chromium) against a
// real wrenn up: the capsule list's first render at 1,000 capsules (10 as
// the baseline), terminal keystroke → echo (a bare PTY WebSocket as the
// baseline) and the frame rate while scrolling 100 live-updating capsules
// (an unchanging list as the baseline). One run whatever b.N is: each
// figure is itself a median or a 10-second average. docs/BENCHMARKS.md.
func BenchmarkDashboard(b *testing.B) {
	testutil.RequireRoot(b)
	node, chromium, webDir := requirements(b)
	w := startUp(b, "10.160.0.0/16")
	b.ResetTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, node, "e2e/bench.mjs")
	run.Dir = webDir
	run.Env = append(run.Environ(), "WRENN_URL="+w.url, "WRENN_KEY="+w.key, "CHROMIUM="+chromium)
	out, err := run.CombinedOutput()
	b.StopTimer()
	if err != nil {
		b.Fatalf("bench.mjs: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	n := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "BENCH" {
			continue
		}
		v, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			b.Fatalf("bad figure %q", sc.Text())
		}
		b.ReportMetric(v, f[3]+"/"+f[1])
		b.Log(sc.Text())
		n++
	}
	if n == 0 {
		b.Fatalf("bench.mjs printed no figures:\n%s", out)
	}
}
