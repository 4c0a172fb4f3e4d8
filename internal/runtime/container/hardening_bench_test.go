package container_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkCreateHardening measures create → first exec (Create, Start,
// envd answering, `true` run through envd) with the issue-11 hardening on
// ("hardened") and off ("plain": Config.DisableUserNS, DisableSeccomp,
// DisableLXCFS), alternating the two in the same run so both see the same
// machine load. Sub-benchmark "all" turns on all three pieces (each
// capsule in its own user namespace over idmapped layers, owning its
// network namespace; the allow-list seccomp profile; LXCFS); "userns",
// "seccomp" and "lxcfs" turn on one each, to show what each piece costs.
// It reports the medians and their ratio (target for "all" ≤ 1.1).
//
// Run: flock /tmp/wrenn-priv.lock go test -run '^$' -bench CreateHardening -benchtime 20x ./internal/runtime/container/
func BenchmarkCreateHardening(b *testing.B) {
	for _, v := range []struct {
		name                   string
		userns, seccomp, lxcfs bool
	}{
		{"all", true, true, true},
		{"userns", true, false, false},
		{"seccomp", false, true, false},
		{"lxcfs", false, false, true},
	} {
		b.Run(v.name, func(b *testing.B) {
			benchHardening(b, func(c *container.Config) {
				c.DisableUserNS, c.DisableSeccomp, c.DisableLXCFS = !v.userns, !v.seccomp, !v.lxcfs
			})
		})
	}
}

func benchHardening(b *testing.B, hardened func(*container.Config)) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatalf("test setup: %v", setupErr)
	}
	hardCfg := testConfig(b, b.TempDir())
	hardened(&hardCfg)
	plainCfg := testConfig(b, b.TempDir())
	plainCfg.DisableUserNS = true
	plainCfg.DisableSeccomp = true
	plainCfg.DisableLXCFS = true
	drivers := map[string]*container.Driver{
		"hardened": openDriver(b, hardCfg),
		"plain":    openDriver(b, plainCfg),
	}
	ctx := testutil.Context(b, 30*time.Minute)
	samples := map[string][]time.Duration{}
	once := func(name string, i int) {
		d := drivers[name]
		id := fmt.Sprintf("cl-bench-%s-%d", name, i)
		t0 := time.Now()
		if _, err := d.Create(ctx, runtime.Spec{ID: id, Template: tmplName}); err != nil {
			b.Fatal(err)
		}
		info, err := d.Start(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		if out, err := runtimetest.EnvdExec(ctx, info, "root", "true"); err != nil {
			b.Fatalf("first exec: %v: %s", err, out)
		}
		samples[name] = append(samples[name], time.Since(t0))
		if err := d.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	// One unmeasured round warms caches (blank image, page cache).
	once("hardened", -1)
	once("plain", -1)
	samples = map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			once("hardened", i)
			once("plain", i)
		} else {
			once("plain", i)
			once("hardened", i)
		}
	}
	b.StopTimer()
	h, p := percentile(samples["hardened"], 0.5), percentile(samples["plain"], 0.5)
	b.ReportMetric(ms(h), "hardened_p50_ms")
	b.ReportMetric(ms(p), "plain_p50_ms")
	b.ReportMetric(ms(percentile(samples["hardened"], 0.9)), "hardened_p90_ms")
	b.ReportMetric(ms(percentile(samples["plain"], 0.9)), "plain_p90_ms")
	b.ReportMetric(float64(h)/float64(p), "hardened/plain_p50")
	b.ReportMetric(0, "ns/op")
}
