package container_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// BenchmarkCreateSeccompLXCFS measures create → first exec (Create, Start,
// envd ready, then `cat /proc/meminfo` run through envd's process API) of
// a cold 1-vCPU capsule with the seccomp allow-list and LXCFS on, next to
// the same build with both off (Config.DisableSeccomp, DisableLXCFS), the
// two alternating in one run. Run with -benchtime=30x.
func BenchmarkCreateSeccompLXCFS(b *testing.B) {
	on := newDriver(b)
	cfg := testConfig(b, b.TempDir())
	cfg.DisableSeccomp, cfg.DisableLXCFS = true, true
	off := openDriver(b, cfg)
	ctx := testutil.Context(b, 30*time.Minute)
	first := func(d *container.Driver, id string) time.Duration {
		t0 := time.Now()
		if _, err := d.Create(ctx, runtime.Spec{ID: id, Template: tmplName, VCPUs: 1, MemoryMB: 128}); err != nil {
			b.Fatal(err)
		}
		info, err := d.Start(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
		if err != nil {
			b.Fatal(err)
		}
		res, err := c.Exec(ctx, &pb.ProcessConfig{Cmd: "/bin/cat", Args: []string{"/proc/meminfo"}}, envdclient.ExecOptions{})
		if err != nil || !strings.HasPrefix(string(res.Stdout), "MemTotal:") {
			b.Fatalf("first exec: %v %q %q", err, res.Stdout, res.Error)
		}
		el := time.Since(t0)
		c.CloseIdleConnections()
		b.StopTimer()
		if err := d.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		return el
	}
	// One of each first, unmeasured (page cache, blank disk image).
	first(on, "cl-warmup-on")
	first(off, "cl-warmup-off")
	var tOn, tOff []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tOn = append(tOn, first(on, fmt.Sprintf("cl-on-%d", i)))
			tOff = append(tOff, first(off, fmt.Sprintf("cl-off-%d", i)))
		} else {
			tOff = append(tOff, first(off, fmt.Sprintf("cl-off-%d", i)))
			tOn = append(tOn, first(on, fmt.Sprintf("cl-on-%d", i)))
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(tOn, 0.5)), "on_p50_ms")
	b.ReportMetric(ms(percentile(tOn, 0.99)), "on_p99_ms")
	b.ReportMetric(ms(percentile(tOff, 0.5)), "off_p50_ms")
	b.ReportMetric(ms(percentile(tOff, 0.99)), "off_p99_ms")
	b.ReportMetric(float64(percentile(tOn, 0.5))/float64(percentile(tOff, 0.5)), "on/off_p50")
	b.ReportMetric(0, "ns/op")
}
