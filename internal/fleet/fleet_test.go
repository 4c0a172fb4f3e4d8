package fleet_test

import (
	"flag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/fleet"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
	sdk "github.com/wrenn-dev/wrenn/sdk"
)

// buildBins builds wrenn and envd for the fleet's processes.
func buildBins(t *testing.T) (wrenn, envd string) {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"wrenn", "github.com/wrenn-dev/wrenn/cmd/wrenn"},
		{"envd", "github.com/wrenn-dev/wrenn/cmd/envd"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", b.pkg, err, out)
		}
	}
	return filepath.Join(dir, "wrenn"), filepath.Join(dir, "envd")
}

// TestFleet: two hosts (each in its own network namespace, joined by
// themselves over mutual TLS) and two control-plane replicas on one
// PostgreSQL behind a load balancer, snapshots and templates in one S3
// store. Capsules are spread over both hosts and answer through either
// replica; a replica killed with SIGKILL costs nothing (the balancer and
// the other replica carry on, and the lease-held reconciler moves to it);
// Stop leaves nothing behind.
func TestFleet(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, 6*time.Minute)
	wrenn, envd := buildBins(t)
	const name = "flt"
	dir := t.TempDir()
	before := fleet.Leaks(name, dir)
	s3 := s3test.Start(t)
	start := time.Now()
	f, err := fleet.Start(ctx, fleet.Options{
		Dir: dir, Name: name, Agents: 2, Replicas: 2, Net: 10,
		Wrenn: wrenn, Envd: envd, PostgresDSN: teststore.PostgresDSN(t), S3: &s3,
		AgentArgs: []string{"--no-criu"}, Log: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet up in %v: %s", time.Since(start).Round(time.Millisecond), f.URL)
	stopped := false
	defer func() {
		if !stopped {
			if err := f.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	}()
	for _, a := range f.Agents {
		if a.HostID == "" {
			t.Fatalf("agent %s joined but no host has its address", a.Instance)
		}
	}

	c, err := sdk.New(f.URL, f.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string]int{}
	var ids []string
	for i := range 4 {
		cp, err := c.Create(ctx, sdk.CreateParams{Template: "minimal", MemoryMB: 128, DiskSizeMB: 512})
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		ids = append(ids, cp.ID)
		var ac struct {
			HostID string `json:"host_id"`
		}
		if err := f.AdminDo(ctx, http.MethodGet, "/v1/admin/capsules/"+cp.ID, nil, &ac); err != nil {
			t.Fatal(err)
		}
		hosts[ac.HostID]++
		r, err := c.Exec(ctx, cp.ID, sdk.ExecRequest{Cmd: "hostname"})
		if err != nil || r.ExitCode != 0 {
			t.Fatalf("exec in %s: %+v, %v", cp.ID, r, err)
		}
	}
	if len(hosts) != 2 {
		t.Errorf("4 capsules on hosts %v: want both hosts used", hosts)
	}

	// A replica dies: every request still gets an answer.
	f.KillReplica(0)
	for _, id := range ids {
		r, err := c.Exec(ctx, id, sdk.ExecRequest{Cmd: "echo", Args: []string{"still here"}})
		if err != nil || strings.TrimSpace(r.Stdout) != "still here" {
			t.Fatalf("exec in %s after replica 0 died: %+v, %v", id, r, err)
		}
	}
	if _, err := c.Create(ctx, sdk.CreateParams{Template: "minimal", MemoryMB: 128, DiskSizeMB: 512}); err != nil {
		t.Fatalf("create after replica 0 died: %v", err)
	}

	stopped = true
	if err := f.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if after := fleet.Leaks(name, dir); after != before {
		t.Errorf("host state before %s, after %s", before, after)
	}
}

type testWriter struct{ t *testing.T }

// capsuleIDRE matches capsule IDs and the drivers' 12-hex keys (in
// namespace names).
var capsuleIDRE = regexp.MustCompile(`cl-[a-z0-9]{8,}|\b[0-9a-f]{12}\b`)

// logLinesAbout prints the fleet's log lines (agents, replicas) that name
// a capsule (or driver key) a problem names, so a CI failure shows what
// happened to it; lines naming a capsule whose key is named come too.
func logLinesAbout(t *testing.T, dir, problem string) {
	ids := capsuleIDRE.FindAllString(problem, -1)
	if len(ids) == 0 {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			for _, id := range ids {
				// A key's line names its capsule: follow it.
				if !strings.HasPrefix(id, "cl-") && strings.Contains(line, id) {
					for _, c := range regexp.MustCompile(`cl-[a-z0-9]{8,}`).FindAllString(line, -1) {
						if !slices.Contains(ids, c) {
							ids = append(ids, c)
						}
					}
				}
			}
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, id := range ids {
				if strings.Contains(line, id) {
					lines = append(lines, line)
					break
				}
			}
		}
		if n := len(lines); n > 60 {
			lines = lines[n-60:]
		}
		if len(lines) > 0 {
			t.Logf("%s about %v:\n%s", filepath.Base(l), ids, strings.Join(lines, "\n"))
		}
	}
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var full = flag.Bool("fleet.full", false, "run the chaos suite in full (make chaos): more faults, workers and hosts")

// TestChaos (issue 24, item 5): a fleet with its own PostgreSQL and S3
// gateway, clients cycling create → exec → pause → resume → exec → delete,
// a template build started during each fault, and one of each fault:
// kill -9 of an agent, a replica, PostgreSQL and the S3 gateway, a network
// partition between a host and the control planes, a kill -9 of an agent
// during a move (a drain in progress), and a host's disk filled (each
// agent's home is a filesystem of its own); throughout, a mover drains
// and undrains hosts, so capsules move between hosts while the faults
// happen. After each: every capsule row agrees with its host within two
// reconcile intervals (plus a heartbeat); at the end hibernated capsules
// resume with their files intact, every build ended (a succeeded one's
// template works, a failed one says why), the API never answered 500, and
// Stop leaves the host as it found it. `make chaos` runs it with
// -fleet.full.
func TestChaos(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, 20*time.Minute)
	wrenn, envd := buildBins(t)
	const name = "fch"
	dir := t.TempDir()
	before := fleet.Leaks(name, dir)
	pg, err := fleet.StartPostgres(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	pgStopped := false
	defer func() {
		if !pgStopped {
			pg.Stop()
		}
	}()
	s3, err := fleet.StartS3(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	s3Stopped := false
	defer func() {
		if !s3Stopped {
			s3.Stop()
		}
	}()
	agents, workers, rounds := 2, 2, 1
	if *full {
		agents, workers, rounds = 3, 6, 3
	}
	f, err := fleet.Start(ctx, fleet.Options{
		Dir: dir, Name: name, Agents: agents, Replicas: 2, Net: 16,
		Wrenn: wrenn, Envd: envd, PostgresDSN: pg.DSN, S3: &s3.Config,
		AgentArgs: []string{"--no-criu"}, Log: testWriter{t},
		HomeSizeMB: 2048, BuildStaleAfter: 15 * time.Second,
		LogLevel: "info", // a problem prints the lines about its capsule
	})
	if err != nil {
		t.Fatal(err)
	}
	var faults []string
	for range rounds {
		for _, fault := range fleet.AllFaults {
			// The reduced run leaves out agents killed during moves: a
			// move whose adopt answer a kill loses leaves its capsule
			// hibernated (intact) instead of running, which the steady
			// check flags (docs/FLEET.md); make chaos keeps them.
			if *full || fault != fleet.FaultKillAgentMove {
				faults = append(faults, fault)
			}
		}
	}
	start := time.Now()
	rep, err := fleet.RunChaos(ctx, f, pg, s3, fleet.ChaosOptions{
		Faults: faults, Workers: workers, Builds: true, Moves: true, KillsDuringMoves: *full, Log: t.Logf,
	})
	if rep != nil {
		t.Logf("chaos: %d cycles in %v, answers %v, no answer %d, settle %v, builds %v, drains %d moving %d capsules",
			rep.Cycles, time.Since(start).Round(time.Second), rep.Statuses, rep.Transport, rep.Settle, rep.Builds, rep.Drains, rep.Moved)
		for _, p := range rep.Problems {
			t.Error(p)
			logLinesAbout(t, dir, p)
		}
	}
	if err != nil {
		t.Error(err)
	}
	if err := f.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
		logLinesAbout(t, dir, err.Error())
	}
	pg.Stop()
	s3.Stop()
	pgStopped, s3Stopped = true, true
	if after := fleet.Leaks(name, dir); after != before {
		t.Errorf("host state before %s, after %s", before, after)
	}
}

// TestLoad (issue 24, item 6): clients cycling create → exec → pause →
// resume → delete against a fleet; reports throughput, per-step p50/p99
// and PostgreSQL connections; no error but capacity refusals. Reduced here
// (2 hosts, 8 clients, 20 s); `make load` runs 3 hosts, 2 replicas and 50
// clients for 2 minutes (-fleet.full).
func TestLoad(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, 15*time.Minute)
	wrenn, envd := buildBins(t)
	const name = "fld"
	dir := t.TempDir()
	before := fleet.Leaks(name, dir)
	agents, clients, dur := 2, 8, 20*time.Second
	if *full {
		agents, clients, dur = 3, 50, 2*time.Minute
	}
	f, err := fleet.Start(ctx, fleet.Options{
		Dir: dir, Name: name, Agents: agents, Replicas: 2, Net: 20 - 1 - agents,
		Wrenn: wrenn, Envd: envd, PostgresDSN: teststore.PostgresDSN(t),
		AgentArgs: []string{"--no-criu", "--memory-overcommit", "16"}, Log: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := fleet.RunLoad(ctx, f, fleet.LoadOptions{Clients: clients, Duration: dur})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load:\n%s", rep)
	if n := rep.ErrorCount(); n > 0 {
		t.Errorf("%d steps failed for reasons other than capacity", n)
	}
	if rep.Cycles == 0 {
		t.Error("no cycle completed")
	}
	if err := f.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if after := fleet.Leaks(name, dir); after != before {
		t.Errorf("host state before %s, after %s", before, after)
	}
}
