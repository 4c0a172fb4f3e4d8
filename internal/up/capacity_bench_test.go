package up_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// startBenchApp runs an in-process `wrenn up` (default overcommit ratios)
// until the benchmark ends.
func startBenchApp(b *testing.B) (*up.App, *wrenn.Client) {
	b.Helper()
	testutil.RequireRoot(b)
	cfg := config(b, b.TempDir(), up.OnExitDestroy, io.Discard)
	ctx := context.Background()
	app, err := up.New(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- app.Run(runCtx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	<-app.Ready()
	c, _ := wrenn.New(app.URL(), app.AdminKey())
	return app, c
}

// meminfo reads /proc/meminfo in bytes.
func meminfo(b *testing.B) map[string]int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 {
			v, _ := strconv.ParseInt(fs[1], 10, 64)
			out[strings.TrimSuffix(fs[0], ":")] = v << 10
		}
	}
	return out
}

// instanceCgroupBytes sums memory.current (v2) or memory.usage_in_bytes
// (v1) of the capsule cgroups under the instance's parent, and the RSS of
// the processes in them named envd.
func instanceCgroupBytes(b *testing.B, instance string) (charged, envdRSS int64, procs int) {
	for _, pat := range []string{"/sys/fs/cgroup/" + instance + "/*/memory.current", "/sys/fs/cgroup/memory/" + instance + "/*/memory.usage_in_bytes"} {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			if v, err := os.ReadFile(f); err == nil {
				n, _ := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
				charged += n
			}
		}
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range stats {
		cg, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cg), "/"+instance+"/") {
			continue
		}
		procs++
		st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if err != nil || !strings.Contains(string(st), "Name:\tenvd") {
			continue
		}
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				n, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
				envdRSS += n << 10
			}
		}
	}
	return charged, envdRSS, procs
}

// BenchmarkIdleCapsulesPerHost creates CAPSULES (default 50) idle minimal
// capsules through the API of one `wrenn up` (default overcommit ratios:
// the scheduler must admit them all) and reports the host memory each
// costs, broken down, and how many would fit until host memory used
// reaches 80 % — an extrapolation from the measured capsules, not a fill
// of the machine (it is shared). The baseline (same run) is the host's
// memory used before the capsules.
func BenchmarkIdleCapsulesPerHost(b *testing.B) {
	n := 50
	if v, err := strconv.Atoi(os.Getenv("CAPSULES")); err == nil && v > 0 {
		n = v
	}
	_, c := startBenchApp(b)
	ctx := testutil.Context(b, 20*time.Minute)
	inst := config(b, "", up.OnExitDestroy, io.Discard).Instance
	// One capsule first so shared pages (envd binary, template files) are
	// cached: the figures are the cost of one more capsule.
	if _, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	m0 := meminfo(b)
	cg0, rss0, _ := instanceCgroupBytes(b, inst)
	for i := range n {
		if _, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate}); err != nil {
			b.Fatalf("capsule %d of %d refused: %v", i+1, n, err)
		}
	}
	time.Sleep(5 * time.Second) // let the capsules settle to idle
	m1 := meminfo(b)
	cg1, rss1, procs := instanceCgroupBytes(b, inst)
	used := func(m map[string]int64) int64 { return m["MemTotal"] - m["MemAvailable"] }
	per := func(d int64) float64 { return float64(d) / float64(n) / (1 << 20) }
	hostPer := per(used(m1) - used(m0))
	for b.Loop() { // the work is above; metrics after the loop (it resets them)
	}
	b.ReportMetric(hostPer, "host_used_MiB/capsule")
	b.ReportMetric(per(cg1-cg0), "cgroup_charged_MiB/capsule")
	b.ReportMetric(per(rss1-rss0), "envd_RSS_MiB/capsule")
	kern := func(m map[string]int64) int64 { return m["Slab"] + m["PageTables"] + m["KernelStack"] + m["Percpu"] }
	b.ReportMetric(per(kern(m1)-kern(m0)), "kernel_slab_pt_stack_MiB/capsule")
	b.ReportMetric(per(m1["Cached"]-m0["Cached"]), "page_cache_MiB/capsule")
	b.ReportMetric(float64(procs)/float64(n+1), "processes/capsule")
	b.ReportMetric(float64(used(m0))/(1<<30), "baseline_used_GiB")
	// MemAvailable moves with everything else on a shared machine, so the
	// extrapolation uses the breakdown: what the capsules' cgroups are
	// charged (envd's private pages and the capsule's own file pages) and
	// the kernel objects they added. Host page cache is reported but not
	// added: it is reclaimable (MemAvailable counts it as available), and
	// on a shared machine its growth is mostly other work. envd's RSS is
	// not added either: it counts the binary's pages every capsule shares.
	cost := per(cg1-cg0) + per(kern(m1)-kern(m0))
	b.ReportMetric(cost, "cost_MiB/capsule")
	room := float64(m1["MemTotal"])*0.8 - float64(used(m0))
	b.ReportMetric(room/(cost*(1<<20)), "capsules_to_80pct")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkConcurrentCreates30 fires 30 creates at once at one `wrenn up`
// and reports how many succeeded and their p50/p99 latency, next to a
// single create's latency on the same idle host (the baseline, same run).
func BenchmarkConcurrentCreates30(b *testing.B) {
	_, c := startBenchApp(b)
	ctx := testutil.Context(b, 20*time.Minute)
	single := func() time.Duration {
		t0 := time.Now()
		cp, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate})
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		_ = c.Delete(ctx, cp.ID)
		return d
	}
	_ = single() // warm the template's pages
	base := single()
	const n = 30
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			t0 := time.Now()
			_, errs[i] = c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate})
			lat[i] = time.Since(t0)
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		if err == nil {
			ok++
		} else {
			b.Logf("create %d: %v", i, err)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p50, p99 := lat[n/2], lat[n*99/100]
	for b.Loop() { // the work is above; metrics after the loop (it resets them)
	}
	b.ReportMetric(float64(ok), "succeeded_of_30")
	b.ReportMetric(float64(p50.Milliseconds()), "p50_ms")
	b.ReportMetric(float64(p99.Milliseconds()), "p99_ms")
	b.ReportMetric(float64(base.Milliseconds()), "single_create_ms")
	b.ReportMetric(float64(p50)/float64(base), "p50/single")
	b.ReportMetric(0, "ns/op")
	if ok != n {
		b.Errorf("%d of %d concurrent creates failed", n-ok, n)
	}
}
