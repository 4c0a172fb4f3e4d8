package fleet_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/fleet"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
	sdk "github.com/wrenn-dev/wrenn/sdk"
)

// moveFleet is a fleet of two hosts sharing an S3 store for the move
// tests (links on 10.3/16, capsules in the lower half of 10.4/16).
type moveFleet struct {
	t    *testing.T
	f    *fleet.Fleet
	c    *sdk.Client
	ctx  context.Context
	criu bool
}

type adminCapsule struct {
	ID     string `json:"id"`
	HostID string `json:"host_id"`
	Status string `json:"status"`
}

func (m *moveFleet) capsule(id string) adminCapsule {
	m.t.Helper()
	var ac adminCapsule
	if err := m.f.AdminDo(m.ctx, http.MethodGet, "/v1/admin/capsules/"+id, nil, &ac); err != nil {
		m.t.Fatalf("GET capsule %s: %v", id, err)
	}
	return ac
}

func (m *moveFleet) agentOf(hostID string) int {
	for i, a := range m.f.Agents {
		if a.HostID == hostID {
			return i
		}
	}
	m.t.Fatalf("no agent has host %s", hostID)
	return -1
}

type hostDrain struct {
	State string `json:"state"`
	Moved int    `json:"moved"`
	Left  []struct {
		CapsuleID string `json:"capsule_id"`
		Status    string `json:"status"`
		Reason    string `json:"reason"`
		Permanent bool   `json:"permanent"`
	} `json:"left"`
}

func (m *moveFleet) drain(hostID string) *hostDrain {
	m.t.Helper()
	var h struct {
		Drain *hostDrain `json:"drain"`
	}
	if err := m.f.AdminDo(m.ctx, http.MethodGet, "/v1/admin/hosts/"+hostID, nil, &h); err != nil {
		m.t.Fatalf("GET host %s: %v", hostID, err)
	}
	return h.Drain
}

// warmReady counts host h's ready warm-pool capsules.
func (m *moveFleet) warmReady(h string) int {
	var out struct {
		Capabilities struct {
			WarmPools []struct {
				Ready int `json:"ready"`
			} `json:"warm_pools"`
		} `json:"capabilities"`
	}
	if err := m.f.AdminDo(m.ctx, http.MethodGet, "/v1/admin/hosts/"+h, nil, &out); err != nil {
		return -1
	}
	n := 0
	for _, p := range out.Capabilities.WarmPools {
		n += p.Ready
	}
	return n
}

func (m *moveFleet) post(path string) {
	m.t.Helper()
	if err := m.f.AdminDo(m.ctx, http.MethodPost, path, nil, nil); err != nil {
		m.t.Fatalf("POST %s: %v", path, err)
	}
}

func (m *moveFleet) exec(id string, cmd string) string {
	m.t.Helper()
	r, err := m.c.Exec(m.ctx, id, sdk.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", cmd}})
	if err != nil || r.ExitCode != 0 {
		m.t.Fatalf("exec %q in %s: %+v, %v", cmd, id, r, err)
	}
	return strings.TrimSpace(r.Stdout)
}

// counting creates a capsule with a file, a counter process (its count
// lives in the shell's memory) and a web server on port 8000; it returns
// the capsule and its port-proxy access token.
func (m *moveFleet) counting(label string) (string, string) {
	m.t.Helper()
	cp, err := m.c.Create(m.ctx, sdk.CreateParams{Template: "minimal", MemoryMB: 128, DiskSizeMB: 512, Timeout: 20 * time.Minute})
	if err != nil {
		m.t.Fatalf("create %s: %v", label, err)
	}
	m.exec(cp.ID, "mkdir -p /root/www && echo "+label+" > /root/www/index.html && echo "+label+"-file > /root/f")
	for _, p := range []sdk.ProcessRequest{
		{ExecRequest: sdk.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"}}, Tag: "counter"},
		{ExecRequest: sdk.ExecRequest{Cmd: "httpd", Args: []string{"-f", "-p", "8000", "-h", "/root/www"}}, Tag: "web"},
	} {
		if _, err := m.c.StartProcess(m.ctx, cp.ID, p); err != nil {
			m.t.Fatalf("start %s in %s: %v", p.Tag, label, err)
		}
	}
	testutil.Eventually(m.t, 20*time.Second, func() bool { return m.count(cp.ID) >= 20 }, label+": counter never reached 20")
	return cp.ID, cp.AccessToken
}

func (m *moveFleet) count(id string) int {
	r, err := m.c.Exec(m.ctx, id, sdk.ExecRequest{Cmd: "/bin/cat", Args: []string{"/tmp/count"}})
	if err != nil {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSpace(r.Stdout))
	return n
}

// keptGoing checks a moved capsule: its file is there and, with memory
// kept, its counter carries on from at least before and its web server
// answers through the port proxy with the capsule's own token.
func (m *moveFleet) keptGoing(id, token, label string, before int) {
	m.t.Helper()
	if got := m.exec(id, "cat /root/f"); got != label+"-file" {
		m.t.Fatalf("%s: file after the move = %q", label, got)
	}
	if !m.criu {
		return
	}
	n := m.count(id)
	if n < before {
		m.t.Fatalf("%s: counter at %d after the move, %d before: the process restarted", label, n, before)
	}
	testutil.Eventually(m.t, 10*time.Second, func() bool { return m.count(id) > n+3 }, label+": counter stopped after the move")
	req, _ := http.NewRequestWithContext(m.ctx, http.MethodGet, m.f.ProxyURL+"/proxy/"+id+"/8000/", nil)
	req.Header.Set("X-Wrenn-Access-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatalf("%s: port proxy after the move: %v", label, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != label {
		m.t.Fatalf("%s: port proxy after the move: %d %q", label, resp.StatusCode, body)
	}
}

// TestMoveAndDrain (issue 24, item 2) on a fleet of two hosts sharing an
// S3 snapshot store:
//   - a capsule paused to disk on host A, A killed: resuming it runs it on
//     B with the same id, files, processes and memory (with CRIU), access
//     token and port-proxy URL; A restarted releases its copy (no leak)
//     and the moved capsule keeps working;
//   - draining a host moves its running capsule off running;
//   - draining with no other host schedulable moves nothing and says why;
//   - once another host has room, the drain moves running (still running,
//     counters carrying on), paused and hibernated capsules (re-homed
//     paused to disk) and the host is drained; undrain reverses it.
func TestMoveAndDrain(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, 10*time.Minute)
	wrenn, envd := buildBins(t)
	const name = "fmv"
	dir := t.TempDir()
	before := fleet.Leaks(name, dir)
	s3 := s3test.Start(t)
	criu := os.Getenv("WRENN_TEST_CRIU")
	args := []string{"--no-criu"}
	if criu != "" {
		args = []string{"--criu", criu}
		for _, e := range strings.Fields(os.Getenv("WRENN_TEST_CRIU_ENV")) {
			args = append(args, "--criu-env", e)
		}
	}
	f, err := fleet.Start(ctx, fleet.Options{
		Dir: dir, Name: name, Agents: 2, Replicas: 2, Net: 3, CapsuleNet: 4,
		Wrenn: wrenn, Envd: envd, PostgresDSN: teststore.PostgresDSN(t), S3: &s3,
		AgentArgs: args, Log: testWriter{t}, WarmPool: "minimal=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			if err := f.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	}()
	c, err := sdk.New(f.URL, f.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	m := &moveFleet{t: t, f: f, c: c, ctx: ctx, criu: criu != ""}

	// 1. Host lost: a hibernated capsule resumes on the other host.
	id, token := m.counting("lost")
	a := m.capsule(id).HostID
	ai := m.agentOf(a)
	b := f.Agents[1-ai].HostID
	if _, err := c.Pause(ctx, id, sdk.PauseOptions{ToDisk: true}); err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	f.KillAgent(ai)
	testutil.Eventually(t, 30*time.Second, func() bool {
		hs, err := f.Hosts(ctx)
		if err != nil {
			return false
		}
		for _, h := range hs {
			if h.ID == a {
				return h.Status == "unavailable"
			}
		}
		return false
	}, "host A never became unavailable")
	t0 := time.Now()
	if _, err := c.Resume(ctx, id, 0); err != nil {
		t.Fatalf("resume with its host gone: %v", err)
	}
	moveTook := time.Since(t0)
	got := m.capsule(id)
	if got.HostID != b || got.Status != "running" {
		t.Fatalf("after resume: host %s status %s, want running on %s", got.HostID, got.Status, b)
	}
	t.Logf("MOVE hibernated capsule to another host (resume with its host down): %v (memory kept: %v)", moveTook.Round(time.Millisecond), m.criu)
	m.keptGoing(id, token, "lost", 20)

	// A comes back: it releases its copy, the moved capsule is untouched.
	if err := f.StartAgent(ctx, ai); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitHostsOnline(ctx, 2); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		caps, err := f.AgentCapsules(ctx, ai)
		_, still := caps[id]
		return err == nil && !still
	}, "host A kept its copy of the moved capsule")
	m.keptGoing(id, token, "lost", 20)
	if _, err := c.Pause(ctx, id, sdk.PauseOptions{ToDisk: true}); err != nil {
		t.Fatalf("pause on B after A came back: %v", err)
	}
	t0 = time.Now()
	if _, err := c.Resume(ctx, id, 0); err != nil {
		t.Fatalf("resume on B after A came back: %v", err)
	}
	t.Logf("BASELINE resume of the same capsule from disk on its own host: %v", time.Since(t0).Round(time.Millisecond))
	if h := m.capsule(id).HostID; h != b {
		t.Fatalf("resumed on %s, want %s (its host is back)", h, b)
	}
	m.keptGoing(id, token, "lost", 20)

	// 2. Drain B: its running capsule moves to A, running.
	nb := m.count(id)
	testutil.Eventually(t, time.Minute, func() bool { return m.warmReady(b) >= 1 }, "host B's warm pool never filled")
	t0 = time.Now()
	if _, err := c.DrainHost(ctx, b); err != nil { // the Go SDK's admin call
		t.Fatalf("DrainHost: %v", err)
	}
	testutil.Eventually(t, 2*time.Minute, func() bool { d := m.drain(b); return d != nil && d.State == "drained" }, "host B never drained")
	t.Logf("DRAIN 1 running capsule: %v", time.Since(t0).Round(time.Millisecond))
	// A drained host keeps no warm capsules (its agent hears "draining"
	// in its heartbeat answers).
	testutil.Eventually(t, 30*time.Second, func() bool { return m.warmReady(b) == 0 }, "drained host B kept its warm pool")
	if got := m.capsule(id); got.HostID != a || got.Status != "running" {
		t.Fatalf("after draining B: %+v, want running on %s", got, a)
	}
	m.keptGoing(id, token, "lost", nb)

	// 3. Running, paused and hibernated capsules on A (B takes no
	// placements); draining A too finds no room and says so.
	r1, r1tok := m.counting("run")
	p1, _ := m.counting("paused")
	h1, _ := m.counting("hib")
	for _, x := range []string{r1, p1, h1} {
		if h := m.capsule(x).HostID; h != a {
			t.Fatalf("capsule %s placed on %s while B drains", x, h)
		}
	}
	if _, err := c.Pause(ctx, p1, sdk.PauseOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pause(ctx, h1, sdk.PauseOptions{ToDisk: true}); err != nil {
		t.Fatal(err)
	}
	m.post("/v1/admin/hosts/" + a + "/drain")
	testutil.Eventually(t, time.Minute, func() bool {
		d := m.drain(a)
		if d == nil || len(d.Left) < 4 {
			return false
		}
		for _, l := range d.Left {
			if strings.Contains(l.Reason, "capacity") {
				return true
			}
		}
		return false
	}, "drain with no other host never reported the lack of capacity")
	if st := m.capsule(r1).Status; st != "running" {
		t.Fatalf("drain without capacity left %s %s", r1, st)
	}
	// A resume that finds no other host runs the capsule on its draining
	// host (which is up); it goes back to disk for the rest of the test.
	if _, err := c.Resume(ctx, h1, 0); err != nil {
		t.Fatalf("resume on a draining host with no other room: %v", err)
	}
	if got := m.capsule(h1); got.HostID != a || got.Status != "running" {
		t.Fatalf("resumed with no other room: %+v, want running on %s", got, a)
	}
	if _, err := c.Pause(ctx, h1, sdk.PauseOptions{ToDisk: true}); err != nil {
		t.Fatal(err)
	}

	// 4. B back in service: A's drain moves everything there.
	n1, nl := m.count(r1), m.count(id)
	t0 = time.Now()
	if hb, err := c.UndrainHost(ctx, b); err != nil || hb.Drain != nil {
		t.Fatalf("UndrainHost: %+v, %v", hb, err)
	}
	testutil.Eventually(t, 3*time.Minute, func() bool { d := m.drain(a); return d != nil && d.State == "drained" }, "host A never drained")
	t.Logf("DRAIN 4 capsules (2 running, 1 paused, 1 hibernated): %v", time.Since(t0).Round(time.Millisecond))
	want := map[string]string{id: "running", r1: "running", p1: "hibernated", h1: "hibernated"}
	for x, st := range want {
		if got := m.capsule(x); got.HostID != b || got.Status != st {
			t.Errorf("after draining A: %s on %s %s, want %s on %s", x, got.HostID, got.Status, st, b)
		}
	}
	if d := m.drain(a); d.Moved != 4 {
		t.Errorf("drain report moved %d, want 4", d.Moved)
	}
	m.keptGoing(r1, r1tok, "run", n1)
	m.keptGoing(id, token, "lost", nl)
	for _, x := range []string{p1, h1} {
		if _, err := c.Resume(ctx, x, 0); err != nil {
			t.Fatalf("resume %s after the drain: %v", x, err)
		}
	}
	if got := m.exec(h1, "cat /root/f"); got != "hib-file" {
		t.Fatalf("hibernated capsule's file after the drain = %q", got)
	}
	caps, err := f.AgentCapsules(ctx, ai)
	if err != nil {
		t.Fatal(err)
	}
	if len(caps) != 0 {
		t.Errorf("host A keeps capsules after its drain: %v", caps)
	}
	m.post("/v1/admin/hosts/" + a + "/undrain")
	if d := m.drain(a); d != nil {
		t.Errorf("after undrain: %+v", d)
	}

	stopped = true
	if err := f.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if after := fleet.Leaks(name, dir); after != before {
		t.Errorf("host state before %s, after %s", before, after)
	}
}
