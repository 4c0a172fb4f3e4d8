package hostagent_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// agentLog shows the agent's info logs (per-create step timings):
// go test -bench CreateToFirstExec ./internal/hostagent/ -agentlog
var agentLog = flag.Bool("agentlog", false, "log the agent at info level (per-step create timings)")

// runcBundle writes an OCI bundle that runs /bin/true on the minimal
// template's rootfs: the bare-runc baseline of the create benchmark.
func runcBundle(b *testing.B) (bundle, root string) {
	b.Helper()
	tmpl, err := templates.Get(tmplName)
	if err != nil {
		b.Fatal(err)
	}
	bundle, root = b.TempDir(), b.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v: %s", err, out)
	}
	path := filepath.Join(bundle, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		b.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["args"] = []string{"/bin/true"}
	proc["terminal"] = false
	spec["root"] = map[string]any{"path": tmpl.Rootfs, "readonly": true}
	raw, _ = json.Marshal(spec)
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		b.Fatal(err)
	}
	return bundle, root
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkCreateToFirstExec measures CreateCapsule + Exec(/bin/true)
// through the agent's RPC API (cold: no warm pool), next to `runc run` of
// /bin/true on the same rootfs in the same run. Reported: p50/p99 of both
// and the ratio of the p50s.
func BenchmarkCreateToFirstExec(b *testing.B) {
	benchCreate(b, false)
}

// BenchmarkCreateToFirstExecWarm is the same with a warm pool of the
// template: each create takes a started-and-frozen capsule.
func BenchmarkCreateToFirstExecWarm(b *testing.B) {
	benchCreate(b, true)
}

func benchCreate(b *testing.B, warm bool) {
	if *agentLog {
		logLevel = slog.LevelInfo
	}
	var tweak func(*hostagent.Config)
	if warm {
		tweak = func(c *hostagent.Config) { c.WarmPools = map[string]int{tmplName: 2} }
	}
	h := startHost(b, newDirs(b), tweak)
	ctx := testutil.Context(b, 30*time.Minute)
	bundle, root := runcBundle(b)
	var agentLat, runcLat []time.Duration
	cold := 0
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		if warm {
			deadline := time.Now().Add(testutil.Long)
			for h.driver.WarmPoolSize(tmplName) == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
		b.StartTimer()
		id := fmt.Sprintf("cl-bench-%d", i)
		start := time.Now()
		cr, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id}))
		if err != nil {
			b.Fatal(err)
		}
		res, err := h.client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/true"}))
		if err != nil || res.Msg.GetExitCode() != 0 {
			b.Fatalf("exec: %v %v", res, err)
		}
		agentLat = append(agentLat, time.Since(start))
		b.StopTimer()
		if !cr.Msg.GetWarmPool() {
			cold++
		}
		if _, err := h.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		cmd := exec.CommandContext(ctx, "runc", "--root", root, "run", "--bundle", bundle, fmt.Sprintf("wrenn-bench-%d-%d", os.Getpid(), i))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v: %s", err, out)
		}
		runcLat = append(runcLat, time.Since(start))
		b.StartTimer()
	}
	b.StopTimer()
	if warm && cold > 0 {
		b.Errorf("%d of %d creates missed the warm pool", cold, b.N)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(agentLat, 0.5)), "create_exec_p50_ms")
	b.ReportMetric(ms(percentile(agentLat, 0.99)), "create_exec_p99_ms")
	b.ReportMetric(ms(percentile(runcLat, 0.5)), "runc_run_p50_ms")
	b.ReportMetric(ms(percentile(runcLat, 0.99)), "runc_run_p99_ms")
	b.ReportMetric(float64(percentile(agentLat, 0.5))/float64(percentile(runcLat, 0.5)), "p50_ratio_vs_runc")
}

// BenchmarkPauseResume measures warm PauseCapsule and ResumeCapsule (each
// including envd's prepare or /init) through the RPC API, next to an Exec
// of /bin/true on the same capsule as the baseline round trip.
func BenchmarkPauseResume(b *testing.B) {
	h := startHost(b, newDirs(b), nil)
	ctx := testutil.Context(b, 30*time.Minute)
	id := "cl-bench-pause"
	if _, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id})); err != nil {
		b.Fatal(err)
	}
	var pauses, resumes, execs []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := h.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id})); err != nil {
			b.Fatal(err)
		}
		pauses = append(pauses, time.Since(start))
		start = time.Now()
		if _, err := h.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
			b.Fatal(err)
		}
		resumes = append(resumes, time.Since(start))
		start = time.Now()
		if _, err := h.client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/true"})); err != nil {
			b.Fatal(err)
		}
		execs = append(execs, time.Since(start))
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(pauses, 0.5)), "pause_p50_ms")
	b.ReportMetric(ms(percentile(resumes, 0.5)), "resume_p50_ms")
	b.ReportMetric(ms(percentile(execs, 0.5)), "exec_p50_ms")
	b.ReportMetric(float64(percentile(pauses, 0.5))/float64(percentile(execs, 0.5)), "pause_vs_exec")
	b.ReportMetric(float64(percentile(resumes, 0.5))/float64(percentile(execs, 0.5)), "resume_vs_exec")
}
