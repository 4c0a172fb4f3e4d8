package container_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// bareBundle writes a bundle that is the capsule's own OCI config with
// /bin/true as the process: the baseline `runc run` of the same bundle.
func bareBundle(b *testing.B, d *container.Driver, id string) string {
	b.Helper()
	key, err := d.Key(id)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(d.RuncRoot(), "..", "capsules", key, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		b.Fatal(err)
	}
	s.Process.Args = []string{"/bin/true"}
	s.Linux.CgroupsPath += "-bare"
	dir := b.TempDir()
	out, _ := json.Marshal(&s)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), out, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkCreateToFirstExec measures create → envd /health answered,
// cold (Create+Start) and from the warm pool (Take), next to a bare
// `runc run` of the same bundle running /bin/true, all in this run.
// Run with -benchtime=30x (each iteration takes one sample of each kind).
func BenchmarkCreateToFirstExec(b *testing.B) {
	d := newDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	if _, err := d.Create(ctx, runtime.Spec{ID: "cl-bundle", Template: tmplName}); err != nil {
		b.Fatal(err)
	}
	bundle := bareBundle(b, d, "cl-bundle")
	d.SetWarmPool(tmplName, 2)
	var bare, cold, warm []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Bare runc run of the same bundle.
		t0 := time.Now()
		id := fmt.Sprintf("bare-%d-%d", os.Getpid(), i)
		if out, err := exec.CommandContext(ctx, "runc", "--root", d.RuncRoot(), "run", "--bundle", bundle, id).CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v %s", err, out)
		}
		bare = append(bare, time.Since(t0))
		_, _ = exec.Command("runc", "--root", d.RuncRoot(), "delete", "-f", id).CombinedOutput()

		// Cold.
		cid := fmt.Sprintf("cl-cold-%d", i)
		t0 = time.Now()
		if _, err := d.Create(ctx, runtime.Spec{ID: cid, Template: tmplName}); err != nil {
			b.Fatal(err)
		}
		info, err := d.Start(ctx, cid)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		cold = append(cold, time.Since(t0))
		b.StopTimer()
		_ = d.Destroy(ctx, cid)
		// Let the pool refill outside the measurement.
		for d.WarmPoolSize(tmplName) < 2 {
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()

		// Warm.
		wid := fmt.Sprintf("cl-warm-%d", i)
		t0 = time.Now()
		info, err = d.Take(ctx, runtime.Spec{ID: wid, Template: tmplName})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		warm = append(warm, time.Since(t0))
		b.StopTimer()
		_ = d.Destroy(ctx, wid)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(bare, 0.5)), "bare_runc_p50_ms")
	b.ReportMetric(ms(percentile(bare, 0.99)), "bare_runc_p99_ms")
	b.ReportMetric(ms(percentile(cold, 0.5)), "cold_p50_ms")
	b.ReportMetric(ms(percentile(cold, 0.99)), "cold_p99_ms")
	b.ReportMetric(ms(percentile(warm, 0.5)), "warm_p50_ms")
	b.ReportMetric(ms(percentile(warm, 0.99)), "warm_p99_ms")
	b.ReportMetric(float64(percentile(cold, 0.5))/float64(percentile(bare, 0.5)), "cold/bare_p50")
	b.ReportMetric(float64(percentile(warm, 0.5))/float64(percentile(bare, 0.5)), "warm/bare_p50")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkWarmPauseResume measures freezer pause and thaw of a running
// capsule, next to a bare `runc state` call (the cheapest runc command).
func BenchmarkWarmPauseResume(b *testing.B) {
	d := newDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	startCapsule(b, d, runtime.Spec{ID: "cl-pr"})
	key, _ := d.Key("cl-pr")
	var pause, resume, base []time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := exec.Command("runc", "--root", d.RuncRoot(), "state", key).Output(); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(t0))
		t0 = time.Now()
		if err := d.Pause(ctx, "cl-pr"); err != nil {
			b.Fatal(err)
		}
		pause = append(pause, time.Since(t0))
		t0 = time.Now()
		if err := d.Resume(ctx, "cl-pr"); err != nil {
			b.Fatal(err)
		}
		resume = append(resume, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(pause, 0.5)), "pause_p50_ms")
	b.ReportMetric(ms(percentile(resume, 0.5)), "resume_p50_ms")
	b.ReportMetric(ms(percentile(base, 0.5)), "runc_state_p50_ms")
	b.ReportMetric(float64(percentile(pause, 0.5)+percentile(resume, 0.5))/float64(percentile(base, 0.5)), "pause+resume/runc_state")
	b.ReportMetric(0, "ns/op")
}

// kernelMemory sums the host's kernel-side memory from /proc/meminfo (slab,
// kernel stacks, page tables, vmalloc, per-cpu): namespaces, veths, mounts,
// loop devices and cgroups live there, uncharged to the capsule's cgroup.
// Unlike MemAvailable, it barely moves with other processes' activity.
func kernelMemory(b *testing.B) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var sum uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		switch k {
		case "Slab", "KernelStack", "PageTables", "VmallocUsed", "Percpu":
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			sum += kb << 10
		}
	}
	return sum
}

// BenchmarkIdleMemory starts idle capsules and reports host-side memory per
// capsule: what its cgroup is charged (envd's pages, kernel memory of its
// processes) plus the growth of the host's kernel memory (namespaces, veth,
// overlay and ext4 mounts, loop device, cgroup structures). The fit
// estimate divides 24 GiB by their sum.
func BenchmarkIdleMemory(b *testing.B) {
	d := newDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	n := 20
	if testing.Short() {
		n = 5
	}
	// One capsule first so shared pages (envd binary, template files) are
	// already cached: the figure is the cost of one more capsule.
	startCapsule(b, d, runtime.Spec{ID: "cl-idle-warmup"})
	time.Sleep(time.Second)
	before := kernelMemory(b)
	for i := range n {
		startCapsule(b, d, runtime.Spec{ID: fmt.Sprintf("cl-idle-%d", i)})
	}
	time.Sleep(2 * time.Second)
	after := kernelMemory(b)
	var cg uint64
	for i := range n {
		st, err := d.Stats(ctx, fmt.Sprintf("cl-idle-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		cg += st.MemoryBytes
	}
	perCgroup := float64(cg) / float64(n)
	perKernel := max(float64(int64(after)-int64(before))/float64(n), 0)
	perHost := perCgroup + perKernel
	b.ReportMetric(perCgroup/(1<<20), "cgroup_MiB/capsule")
	b.ReportMetric(perKernel/(1<<20), "kernel_MiB/capsule")
	b.ReportMetric(perHost/(1<<20), "host_MiB/capsule")
	b.ReportMetric(perHost/(5<<20), "host/5MiB_target")
	b.ReportMetric(float64(24<<30)/perHost, "capsules_in_24GiB")
	b.ReportMetric(0, "ns/op")
	for i := 0; i < b.N; i++ {
		if _, err := d.Stats(ctx, "cl-idle-0"); err != nil {
			b.Fatal(err)
		}
	}
}
