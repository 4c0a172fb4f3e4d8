package container_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// The gVisor benchmarks of issue 18 (docs/BENCHMARKS.md has the figures
// and the commands). Each prints its figure next to a same-run baseline.

// firstExec runs /bin/true in the capsule through envd.
func firstExec(ctx context.Context, b *testing.B, info runtime.Info) {
	b.Helper()
	if out, err := runtimetest.EnvdExec(ctx, info, "root", "/bin/true"); err != nil {
		b.Fatalf("first exec in %s: %v: %s", info.ID, err, out)
	}
}

// BenchmarkGVisorCreateToFirstExec: create → first exec completed through
// envd, cold (Create+Start) and from the warm pool (Take), next to a bare
// `runsc run` of the same bundle running /bin/true (same flags, same
// netns), all in this run. Run with -benchtime=10x.
func BenchmarkGVisorCreateToFirstExec(b *testing.B) {
	d := gvisorDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	if _, err := d.Create(ctx, runtime.Spec{ID: "cl-gbundle", Template: tmplName}); err != nil {
		b.Fatal(err)
	}
	bundle := bareBundle(b, d, "cl-gbundle")
	d.SetWarmPool(tmplName, 2)
	var bare, cold, warm []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("gbare-%d-%d", os.Getpid(), i)
		t0 := time.Now()
		if out, err := exec.CommandContext(ctx, d.RuntimePath(), d.RuntimeArgs("run", "--bundle", bundle, id)...).CombinedOutput(); err != nil {
			b.Fatalf("runsc run: %v %s", err, out)
		}
		bare = append(bare, time.Since(t0))
		_, _ = exec.Command(d.RuntimePath(), d.RuntimeArgs("delete", "-force", id)...).CombinedOutput()

		cid := fmt.Sprintf("cl-gcold-%d", i)
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
		firstExec(ctx, b, info)
		cold = append(cold, time.Since(t0))
		b.StopTimer()
		_ = d.Destroy(ctx, cid)
		for d.WarmPoolSize(tmplName) < 2 {
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()

		wid := fmt.Sprintf("cl-gwarm-%d", i)
		t0 = time.Now()
		info, err = d.Take(ctx, runtime.Spec{ID: wid, Template: tmplName})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		firstExec(ctx, b, info)
		warm = append(warm, time.Since(t0))
		b.StopTimer()
		_ = d.Destroy(ctx, wid)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(bare, 0.5)), "bare_runsc_p50_ms")
	b.ReportMetric(ms(percentile(cold, 0.5)), "cold_p50_ms")
	b.ReportMetric(ms(percentile(warm, 0.5)), "warm_p50_ms")
	b.ReportMetric(ms(percentile(warm, 0.99)), "warm_p99_ms")
	b.ReportMetric(float64(percentile(cold, 0.5))/float64(percentile(bare, 0.5)), "cold/bare_p50")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkGVisorExecTransfer: exec round trip (p50 of 30) and a 1 GiB
// upload and download through envd in a gVisor capsule and in a runc
// capsule of the same spec, in this run; reports the ratios (the cost of
// gVisor's boundary).
func BenchmarkGVisorExecTransfer(b *testing.B) {
	g := gvisorDriver(b)
	r := newDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	spec := runtime.Spec{ID: "cl-gxfer", Template: tmplName, MemoryMB: 512, DiskSizeMB: 1536}
	gi := startCapsule(b, g, spec)
	spec.ID = "cl-rxfer"
	ri := startCapsule(b, r, spec)
	const size = 1 << 30
	measure := func(info runtime.Info) (execP50, up, down time.Duration) {
		var lat []time.Duration
		for range 30 {
			t0 := time.Now()
			firstExec(ctx, b, info)
			lat = append(lat, time.Since(t0))
		}
		c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseIdleConnections()
		t0 := time.Now()
		if _, err := c.Upload(ctx, "/root/big", "root", io.LimitReader(zeroFree{}, size)); err != nil {
			b.Fatalf("upload to %s: %v", info.ID, err)
		}
		up = time.Since(t0)
		t0 = time.Now()
		body, n, err := c.Download(ctx, "/root/big", "root")
		if err != nil {
			b.Fatalf("download from %s: %v", info.ID, err)
		}
		got, err := io.Copy(io.Discard, body)
		body.Close()
		if err != nil || got != size {
			b.Fatalf("download from %s: %d of %d (%d announced): %v", info.ID, got, size, n, err)
		}
		down = time.Since(t0)
		if out, err := runtimetest.EnvdExec(ctx, info, "root", "rm", "/root/big"); err != nil {
			b.Fatalf("rm: %v %s", err, out)
		}
		return percentile(lat, 0.5), up, down
	}
	var ge, gu, gd, re, ru, rd time.Duration
	for i := 0; i < b.N; i++ {
		ge, gu, gd = measure(gi)
		re, ru, rd = measure(ri)
	}
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	b.ReportMetric(ms(ge), "gvisor_exec_p50_ms")
	b.ReportMetric(ms(re), "runc_exec_p50_ms")
	b.ReportMetric(float64(ge)/float64(re), "exec_gvisor/runc")
	b.ReportMetric(mbps(gu), "gvisor_up_MBps")
	b.ReportMetric(mbps(ru), "runc_up_MBps")
	b.ReportMetric(float64(gu)/float64(ru), "upload_gvisor/runc")
	b.ReportMetric(mbps(gd), "gvisor_down_MBps")
	b.ReportMetric(mbps(rd), "runc_down_MBps")
	b.ReportMetric(float64(gd)/float64(rd), "download_gvisor/runc")
	b.ReportMetric(0, "ns/op")
}

// zeroFree is an endless stream of non-zero bytes (the snapshot engine
// and file systems would shortcut zeros).
type zeroFree struct{}

func (zeroFree) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i%251) + 1
	}
	return len(p), nil
}

// BenchmarkGVisorPauseToDisk: pause to disk and resume of a capsule whose
// process holds 200 MiB of random memory, gVisor (runsc checkpoint) next
// to runc with CRIU in this run: times and stored bytes of the memory
// image; then a re-pause after the process rewrote 1 % of its memory,
// whose stored bytes are compared with the touched memory (target ≤ 1.1×).
// Needs WRENN_TEST_CRIU like the CRIU tests.
func BenchmarkGVisorPauseToDisk(b *testing.B) {
	g := gvisorDriver(b)
	r := criuDriver(b)
	ctx := testutil.Context(b, 30*time.Minute)
	const mib = 200
	type result struct {
		pause, resume, repause time.Duration
		stored, restored       int64
	}
	run := func(d *container.Driver, id string) result {
		info := startCapsule(b, d, runtime.Spec{ID: id, Template: tmplName, MemoryMB: 768})
		install(ctx, b, info)
		if out, err := runtimetest.EnvdExec(ctx, info, "root", "sh", "-c",
			fmt.Sprintf("setsid %s hold %d > /tmp/hold.out 2>&1 < /dev/null & echo $! > /tmp/hold.pid; for i in $(seq 600); do grep -q READY /tmp/hold.out && break; sleep 0.1; done; cat /tmp/hold.out", hostileHelperPath, mib)); err != nil || !strings.Contains(out, "READY") {
			b.Fatalf("hold in %s: %v: %s", id, err, out)
		}
		var res result
		t0 := time.Now()
		snap, err := d.Snapshot(ctx, id)
		if err != nil || !snap.MemoryKept {
			b.Fatalf("Snapshot %s: %v (memory kept %v)", id, err, snap.MemoryKept)
		}
		res.pause = time.Since(t0)
		res.stored = totalStored(readHeader(ctx, b, d.SnapshotManager(), snap.Keys[1]))
		t0 = time.Now()
		info, err = d.Restore(ctx, snap)
		if err != nil || !info.MemoryKept {
			b.Fatalf("Restore %s: %v (memory kept %v)", id, err, info.MemoryKept)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		res.resume = time.Since(t0)
		if out, err := runtimetest.EnvdExec(ctx, info, "root", "sh", "-c",
			"kill -USR1 $(cat /tmp/hold.pid); for i in $(seq 600); do grep -q TOUCHED /tmp/hold.out && break; sleep 0.1; done; cat /tmp/hold.out"); err != nil || !strings.Contains(out, "TOUCHED") {
			b.Fatalf("touch in %s: %v: %s", id, err, out)
		}
		t0 = time.Now()
		snap2, err := d.Snapshot(ctx, id)
		if err != nil || !snap2.MemoryKept {
			b.Fatalf("re-pause %s: %v", id, err)
		}
		res.repause = time.Since(t0)
		res.restored = totalStored(readHeader(ctx, b, d.SnapshotManager(), snap2.Keys[1]))
		return res
	}
	var gr, rr result
	for i := 0; i < b.N; i++ {
		gr = run(g, fmt.Sprintf("cl-gpause-%d", i))
		rr = run(r, fmt.Sprintf("cl-rpause-%d", i))
	}
	touched := float64(mib<<20) / 100
	b.ReportMetric(ms(gr.pause), "gvisor_pause_ms")
	b.ReportMetric(ms(rr.pause), "criu_pause_ms")
	b.ReportMetric(ms(gr.resume), "gvisor_resume_ms")
	b.ReportMetric(ms(rr.resume), "criu_resume_ms")
	b.ReportMetric(float64(gr.stored)/(1<<20), "gvisor_stored_MiB")
	b.ReportMetric(float64(rr.stored)/(1<<20), "criu_stored_MiB")
	b.ReportMetric(ms(gr.repause), "gvisor_repause_ms")
	b.ReportMetric(float64(gr.restored)/(1<<20), "gvisor_repause_stored_MiB")
	b.ReportMetric(float64(gr.restored)/touched, "gvisor_repause/touched")
	b.ReportMetric(float64(rr.restored)/(1<<20), "criu_repause_stored_MiB")
	b.ReportMetric(float64(rr.restored)/touched, "criu_repause/touched")
	b.ReportMetric(0, "ns/op")
}

// hostileHelperPath is where install puts the helper in a capsule.
const hostileHelperPath = "/tmp/wrenn-hostile"

// install uploads the hostile helper (its "hold" mode) into a capsule.
func install(ctx context.Context, b *testing.B, info runtime.Info) {
	b.Helper()
	bin, err := os.ReadFile(helperBin)
	if err != nil {
		b.Fatal(err)
	}
	c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Upload(ctx, hostileHelperPath, "root", bytes.NewReader(bin)); err != nil {
		b.Fatal(err)
	}
	if out, err := runtimetest.EnvdExec(ctx, info, "root", "chmod", "755", hostileHelperPath); err != nil {
		b.Fatalf("chmod: %v %s", err, out)
	}
}

// BenchmarkGVisorIdleMemory: host memory per idle gVisor capsule (what its
// cgroup is charged: sentry, gofer, envd's pages in the sentry; plus the
// growth of the host's kernel memory) and how many fit in 24 GiB, next to
// the same figure for runc capsules in this run.
func BenchmarkGVisorIdleMemory(b *testing.B) {
	n := 10
	if testing.Short() {
		n = 4
	}
	perCapsule := func(d *container.Driver, prefix string) float64 {
		ctx := testutil.Context(b, 10*time.Minute)
		startCapsule(b, d, runtime.Spec{ID: prefix + "-warmup"})
		time.Sleep(time.Second)
		before := kernelMemory(b)
		for i := range n {
			startCapsule(b, d, runtime.Spec{ID: fmt.Sprintf("%s-%d", prefix, i)})
		}
		time.Sleep(2 * time.Second)
		after := kernelMemory(b)
		var cg uint64
		for i := range n {
			st, err := d.Stats(ctx, fmt.Sprintf("%s-%d", prefix, i))
			if err != nil {
				b.Fatal(err)
			}
			cg += st.MemoryBytes
		}
		for i := range n {
			_ = d.Destroy(ctx, fmt.Sprintf("%s-%d", prefix, i))
		}
		return float64(cg)/float64(n) + max(float64(int64(after)-int64(before))/float64(n), 0)
	}
	var g, r float64
	for i := 0; i < b.N; i++ {
		g = perCapsule(gvisorDriver(b), "cl-gidle")
		r = perCapsule(newDriver(b), "cl-ridle")
	}
	b.ReportMetric(g/(1<<20), "gvisor_host_MiB/capsule")
	b.ReportMetric(r/(1<<20), "runc_host_MiB/capsule")
	b.ReportMetric(g/r, "gvisor/runc")
	b.ReportMetric(float64(24<<30)/g, "gvisor_capsules_in_24GiB")
	b.ReportMetric(0, "ns/op")
}
