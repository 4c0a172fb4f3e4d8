package e2bcompat

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkE2BRoutes measures, in one run against one `wrenn up` (base
// template): create → first exec through E2B's SDK vs raw HTTP calls to
// Wrenn's API; one exec round trip through the E2B envd route vs Wrenn's
// exec route; and a large upload and download (BENCH_MIB, default 1024)
// through the E2B envd route vs directly against the capsule's envd. It
// reports the figures and the ratios the issue bounds (create and exec
// ≤ 1.2×, transfers ≥ 0.8×). b.N is ignored: one run is the measurement.
//
//	flock /tmp/wrenn-priv.lock go test -run '^$' -bench BenchmarkE2BRoutes -benchtime 1x ./test/e2bcompat/
func BenchmarkE2BRoutes(b *testing.B) {
	ctx := testutil.Context(b, 30*time.Minute)
	url, key, home := wrennUp(ctx, b, true, "10.251.0.0/16")
	mib := os.Getenv("BENCH_MIB")
	if mib == "" {
		mib = "1024"
	}
	for range b.N {
		run := exec.CommandContext(ctx, "node", "bench.mjs")
		run.Env = append(os.Environ(), "E2B_API_URL="+url+"/e2b", "E2B_SANDBOX_URL="+url+"/e2b/envd", "E2B_API_KEY="+key,
			"WRENN_URL="+url, "WRENN_KEY="+key, "WRENN_HOME="+home, "BENCH_ROUNDS=5", "BENCH_MIB="+mib)
		run.Stderr = os.Stderr
		out, err := run.Output()
		if err != nil {
			b.Fatalf("bench.mjs: %v\n%s", err, out)
		}
		var f map[string]float64
		if err := json.Unmarshal(out, &f); err != nil {
			b.Fatalf("bench.mjs output: %v\n%s", err, out)
		}
		b.Logf("figures (%s MiB transfers): %s", mib, out)
		for k, v := range f {
			b.ReportMetric(v, k)
		}
		ratio := func(name string, x, y float64) {
			b.ReportMetric(x/y, name)
			b.Logf("%s = %s", name, strconv.FormatFloat(x/y, 'f', 3, 64))
		}
		ratio("create_ratio", f["createFirstExecE2BMs"], f["createFirstExecWrennMs"])
		ratio("exec_ratio", f["execE2BMs"], f["execWrennMs"])
		ratio("upload_ratio", f["uploadE2BMiBs"], f["uploadDirectMiBs"])
		ratio("download_ratio", f["downloadE2BMiBs"], f["downloadDirectMiBs"])
	}
}
