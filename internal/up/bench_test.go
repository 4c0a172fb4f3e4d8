package up_test

import (
	"context"
	"io"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// BenchmarkUpToFirstCapsule measures a first `wrenn up` on an empty home
// (admin bootstrap, minimal template build, agent and API start) until
// its first capsule has run `echo`, next to a restart over the same home
// (the baseline, measured in the same run), and reports both and their
// ratio.
func BenchmarkUpToFirstCapsule(b *testing.B) {
	testutil.RequireRoot(b)
	var first, restart time.Duration
	n := 0
	for b.Loop() {
		home := b.TempDir()
		first += timeToCapsule(b, home)
		restart += timeToCapsule(b, home)
		n++
	}
	b.ReportMetric(float64(first.Milliseconds())/float64(n), "first_start_to_exec_ms")
	b.ReportMetric(float64(restart.Milliseconds())/float64(n), "restart_to_exec_ms")
	b.ReportMetric(float64(first)/float64(restart), "first/restart")
}

func timeToCapsule(b *testing.B, home string) time.Duration {
	ctx := context.Background()
	start := time.Now()
	app, err := up.New(ctx, config(b, home, up.OnExitDestroy, io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- app.Run(runCtx) }()
	<-app.Ready()
	c, _ := wrenn.New(app.URL(), app.AdminKey())
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"hi"}}); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkCreateExecWarmPool measures create → first exec through the
// API for a template with a warm pool, next to the same template without
// one (the baseline, same run, same instance), and reports p50s and their
// ratio.
func BenchmarkCreateExecWarmPool(b *testing.B) {
	testutil.RequireRoot(b)
	home := b.TempDir()
	cfg := config(b, home, up.OnExitDestroy, io.Discard)
	cfg.WarmPools = map[string]int{up.MinimalTemplate: 2}
	// Pool capsules are made with the runtime's default disk; a create
	// hits the pool only when it asks for the same (the API's 5120 MB).
	cfg.DefaultDiskSizeMB = 5120
	ctx := context.Background()
	app, err := up.New(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- app.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	<-app.Ready()
	// A second name for the same rootfs, without a pool.
	ts := template.Store{Dir: filepath.Join(home, "templates")}
	src, err := ts.Get(up.MinimalTemplate)
	if err != nil {
		b.Fatal(err)
	}
	cold, err := ts.ImportDir(ctx, "cold", src.Rootfs)
	if err != nil {
		b.Fatal(err)
	}
	st, err := controlplane.OpenStore(ctx, filepath.Join(home, "wrenn.db"))
	if err != nil {
		b.Fatal(err)
	}
	if err := up.RegisterTemplate(ctx, st, cold); err != nil {
		b.Fatal(err)
	}
	_ = st.Close()
	c, _ := wrenn.New(app.URL(), app.AdminKey())
	once := func(tmpl string) time.Duration {
		t0 := time.Now()
		capsule, err := c.Create(ctx, wrenn.CreateParams{Template: tmpl})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"hi"}}); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		if err := c.Delete(ctx, capsule.ID); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var warm, coldD []time.Duration
	for b.Loop() {
		time.Sleep(1500 * time.Millisecond) // let the pool refill: measure hits
		warm = append(warm, once(up.MinimalTemplate))
		coldD = append(coldD, once("cold"))
	}
	w, k := median(warm), median(coldD)
	b.ReportMetric(float64(w.Microseconds())/1000, "warm_create_exec_p50_ms")
	b.ReportMetric(float64(k.Microseconds())/1000, "cold_create_exec_p50_ms")
	b.ReportMetric(float64(w)/float64(k), "warm/cold")
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}
