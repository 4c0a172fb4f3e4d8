package fleet_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

// hostState counts what a fleet could leak on the host (capsule and agent
// namespaces of this fleet, its cgroup parents, its links).
func hostState(t *testing.T, name string) string {
	t.Helper()
	var parts []string
	es, _ := os.ReadDir("/run/netns")
	n := 0
	for _, e := range es {
		if strings.HasPrefix(e.Name(), name) {
			n++
		}
	}
	parts = append(parts, fmt.Sprintf("netns=%d", n))
	cg := 0
	roots, _ := os.ReadDir("/sys/fs/cgroup")
	for _, r := range roots {
		sub, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", r.Name()))
		for _, s := range sub {
			if s.IsDir() && strings.HasPrefix(s.Name(), name) {
				cg++
			}
		}
	}
	parts = append(parts, fmt.Sprintf("cgroups=%d", cg))
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	links := 0
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], name) {
			links++
		}
	}
	parts = append(parts, fmt.Sprintf("links=%d", links))
	return strings.Join(parts, " ")
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
	before := hostState(t, name)
	s3 := s3test.Start(t)
	start := time.Now()
	f, err := fleet.Start(ctx, fleet.Options{
		Dir: t.TempDir(), Name: name, Agents: 2, Replicas: 2, Net: 10,
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
	if after := hostState(t, name); after != before {
		t.Errorf("host state before %s, after %s", before, after)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
