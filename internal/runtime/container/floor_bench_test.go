package container_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// defaultRuncBundle writes the floor's bundle: a busybox rootfs and the
// config `runc spec` writes, running /bin/true without a terminal (as
// `wrenn bench`'s runcBaseline does).
func defaultRuncBundle(ctx context.Context, b *testing.B) string {
	b.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		b.Skip("no busybox in PATH")
	}
	dir := b.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil { //nolint:gosec // an executable
		b.Fatal(err)
	}
	if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", "true")); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v %s", err, out)
	}
	var s specs.Spec
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		b.Fatal(err)
	}
	s.Process.Terminal = false
	s.Process.Args = []string{"/bin/true"}
	writeSpec(b, dir, &s)
	return dir
}

func writeSpec(b *testing.B, dir string, s *specs.Spec) {
	b.Helper()
	out, err := json.Marshal(s)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), out, 0o600); err != nil {
		b.Fatal(err)
	}
}

// floorVariant is the capsule's OCI config with one piece taken out.
type floorVariant struct {
	name string
	edit func(s *specs.Spec)
}

func dropNamespace(s *specs.Spec, t specs.LinuxNamespaceType) {
	s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == t })
}

func noUserns(s *specs.Spec) {
	dropNamespace(s, specs.UserNamespace)
	s.Linux.UIDMappings, s.Linux.GIDMappings = nil, nil
}

func noLXCFS(s *specs.Spec) {
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return strings.Contains(m.Source, "lxcfs") })
}

func noResources(s *specs.Spec) {
	s.Linux.Resources = &specs.LinuxResources{Devices: s.Linux.Resources.Devices}
}

func noMasks(s *specs.Spec) { s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil }

var floorVariants = []floorVariant{
	{"capsule", func(*specs.Spec) {}},
	{"no_userns", noUserns},
	{"no_seccomp", func(s *specs.Spec) { s.Linux.Seccomp = nil }},
	{"no_lxcfs", noLXCFS},
	{"no_resources", noResources},
	{"no_masks", noMasks},
	{"no_cgroupns", func(s *specs.Spec) { dropNamespace(s, specs.CgroupNamespace) }},
	{"no_caps_nnp", func(s *specs.Spec) {
		s.Process.Capabilities = nil
		s.Process.NoNewPrivileges = false
		s.Process.OOMScoreAdj = nil
	}},
	{"none", func(s *specs.Spec) {
		noUserns(s)
		s.Linux.Seccomp = nil
		noLXCFS(s)
		noResources(s)
		noMasks(s)
	}},
}

// BenchmarkColdFloor names the floor of a cold create, all in one run:
//
//	(a) bare: `runc run /bin/true` of busybox with `runc spec`'s config;
//	(b) capsule: `runc run /bin/true` with the capsule's own OCI config
//	    (user namespace and id maps, cgroup limits, seccomp, LXCFS and the
//	    other mounts, its overlay rootfs), and the same config with one
//	    piece taken out at a time (no_*) and with all of them out (none);
//	(c) cold: the driver's Create+Start until envd answers /health, with
//	    the p50 of each step (network runs beside dir..rootfs);
//	(d) the same cold create with DefaultColdSpares spares (spares.go),
//	    each sample taken with the spares made.
//
// (b) − (a) is what the isolation the product requires costs at start.
// Run with -benchtime=20x (each iteration takes one sample of each kind).
func BenchmarkColdFloor(b *testing.B) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatalf("test setup: %v", setupErr)
	}
	ctx := testutil.Context(b, 30*time.Minute)
	var (
		mu    sync.Mutex
		steps = map[string][]time.Duration{}
	)
	timed := func(label string, spares int) *container.Driver {
		cfg := testConfig(b, b.TempDir())
		cfg.ColdSpares = spares
		cfg.CreateSteps = func(s *runtime.Steps) {
			if s.Op != container.OpCreate && s.Op != container.OpStart {
				return
			}
			for _, name := range s.Names() {
				_ = s.Wrap(name, func(ctx context.Context, next func(context.Context) error) error {
					t0 := time.Now()
					err := next(ctx)
					mu.Lock()
					steps[label+name] = append(steps[label+name], time.Since(t0))
					mu.Unlock()
					return err
				})
			}
		}
		return openDriver(b, cfg)
	}
	d := timed("c_step_", 0)
	ds := timed("d_step_", container.DefaultColdSpares)
	if _, err := d.Create(ctx, runtime.Spec{ID: "cl-floor", Template: tmplName}); err != nil {
		b.Fatal(err)
	}
	capsuleBundle := bareBundle(b, d, "cl-floor")
	raw, err := os.ReadFile(filepath.Join(capsuleBundle, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	bundles := make([]string, len(floorVariants))
	for i, v := range floorVariants {
		var s specs.Spec
		if err := json.Unmarshal(raw, &s); err != nil {
			b.Fatal(err)
		}
		s.Linux.CgroupsPath += "-" + v.name
		v.edit(&s)
		bundles[i] = b.TempDir()
		writeSpec(b, bundles[i], &s)
	}
	bare := defaultRuncBundle(ctx, b)
	bareRoot := b.TempDir()
	run := func(root, bundle, id string) time.Duration {
		t0 := time.Now()
		if out, err := exec.CommandContext(ctx, "runc", "--root", root, "run", "--bundle", bundle, id).CombinedOutput(); err != nil {
			b.Fatalf("runc run %s: %v %s", bundle, err, out)
		}
		dt := time.Since(t0)
		_, _ = exec.Command("runc", "--root", root, "delete", "-f", id).CombinedOutput()
		return dt
	}
	var bareD, coldD, readyD, spareD []time.Duration
	coldCreate := func(d *container.Driver, cid string) (total, ready time.Duration) {
		t0 := time.Now()
		if _, err := d.Create(ctx, runtime.Spec{ID: cid, Template: tmplName, AllowInternet: true}); err != nil {
			b.Fatal(err)
		}
		info, err := d.Start(ctx, cid)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), time.Since(t1)
	}
	varD := make([][]time.Duration, len(floorVariants))
	mu.Lock()
	clear(steps)
	mu.Unlock()
	b.ResetTimer()
	waitSpares := func() {
		for n, _, _ := ds.SpareCount(); n < container.DefaultColdSpares; n, _, _ = ds.SpareCount() {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < b.N; i++ {
		// No refill of ds's spares runs during the other samples.
		b.StopTimer()
		waitSpares()
		b.StartTimer()
		bareD = append(bareD, run(bareRoot, bare, fmt.Sprintf("floor-bare-%d-%d", os.Getpid(), i)))
		for j := range floorVariants {
			varD[j] = append(varD[j], run(d.RuncRoot(), bundles[j], fmt.Sprintf("floor-%d-%d-%d", j, os.Getpid(), i)))
		}
		cid := fmt.Sprintf("cl-floor-%d", i)
		total, ready := coldCreate(d, cid)
		coldD = append(coldD, total)
		readyD = append(readyD, ready)
		b.StopTimer()
		_ = d.Destroy(ctx, cid)
		// (d) the same with spares: wait until they are made, outside the sample.
		waitSpares()
		b.StartTimer()
		sid := fmt.Sprintf("cl-floor-s%d", i)
		total, _ = coldCreate(ds, sid)
		spareD = append(spareD, total)
		b.StopTimer()
		_ = ds.Destroy(ctx, sid)
		time.Sleep(50 * time.Millisecond) // the teardown after Destroy runs outside the next sample
		b.StartTimer()
	}
	b.StopTimer()
	p50 := func(d []time.Duration) float64 { return ms(percentile(d, 0.5)) }
	b.ReportMetric(p50(bareD), "a_bare_p50_ms")
	for j, v := range floorVariants {
		b.ReportMetric(p50(varD[j]), "b_"+v.name+"_p50_ms")
	}
	b.ReportMetric(p50(varD[0])-p50(bareD), "floor_b-a_ms")
	b.ReportMetric(p50(coldD), "c_cold_p50_ms")
	b.ReportMetric(p50(readyD), "c_wait_ready_p50_ms")
	b.ReportMetric(p50(spareD), "d_cold_spares_p50_ms")
	mu.Lock()
	for name, ds := range steps {
		b.ReportMetric(p50(ds), name+"_p50_ms")
	}
	mu.Unlock()
	b.ReportMetric(p50(coldD)/p50(bareD), "cold/bare_p50")
	b.ReportMetric(p50(spareD)/p50(bareD), "spares/bare_p50")
	b.ReportMetric(p50(varD[0])/p50(bareD), "capsule/bare_p50")
	b.ReportMetric(0, "ns/op")
}
