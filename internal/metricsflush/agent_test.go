package metricsflush_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/metricsflush"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func buildEnvd(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(dir, "envd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/envd")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build envd: %v: %s", err, out)
	}
	return bin
}

// TestFlushFromRealAgent runs a real host agent with the container driver,
// starts a capsule that keeps one CPU busy, and flushes its 1 s samples
// through the agents pool (the client the API uses): the snapshots are
// 1 s apart, count about one busy core and the guest's memory, and a
// second flush adds only the newer seconds.
func TestFlushFromRealAgent(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st := teststore.Open(t, teststore.SQLite)
	dir := t.TempDir()
	envd := buildEnvd(t, dir)
	tmpls := &template.Store{Dir: filepath.Join(dir, "templates")}
	if _, err := tmpls.BuildBusybox(ctx, "minimal", ""); err != nil {
		t.Fatalf("build minimal template: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const tok = "metricsflush-host-token"
	if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken(tok), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h, err := st.RegisterHost(ctx, auth.HashToken(tok), store.Host{ID: store.NewID(store.PrefixHost), Address: ln.Addr().String(), VCPUs: 2, MemoryMB: 2048})
	if err != nil {
		t.Fatal(err)
	}
	pool := agents.New(agents.Config{Key: []byte("metricsflush-test-key-0123456789abcdef")})
	t.Cleanup(pool.Close)

	tag := "wmf" + strings.TrimPrefix(h.ID, "host-")[:6]
	dc := container.Config{
		StateDir: filepath.Join(dir, "driver"), Templates: *tmpls, EnvdPath: envd,
		DefaultMemoryMB: 128, DefaultDiskSizeMB: 64, PidsLimit: 128, CgroupParent: "/" + tag,
		// 10.200-209: a range no other package's tests use.
		Network: network.Config{Subnet: netip.MustParsePrefix("10.203.0.0/16"), Table: tag, NetnsPrefix: tag + "-"},
		Logger:  log,
	}
	drv, err := container.New(ctx, dc)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	ag, err := hostagent.New(ctx, hostagent.Config{
		Driver: drv, StateDir: filepath.Join(dir, "agent"), Templates: tmpls, DefaultTemplate: "minimal",
		Secret: pool.Credential(h.ID), Logger: log,
	})
	if err != nil {
		_ = drv.Close()
		t.Fatalf("hostagent.New: %v", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = ag.Serve(sctx, ln, hostagent.ServerConfig{Logger: log}) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = ag.Close()
		_ = drv.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), testutil.Long)
		defer ccancel()
		if last, err := container.New(cctx, dc); err == nil {
			infos, _ := last.Recover(cctx)
			for _, in := range infos {
				_ = last.Destroy(cctx, in.ID)
			}
			_ = last.Close()
			_ = last.Network().RemoveTable()
		}
		for _, sub := range []string{"unified", "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc", ""} {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", sub, dc.CgroupParent))
		}
	})

	team, err := st.CreateTeam(ctx, store.Team{Name: "metered"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.CreateCapsule(ctx, store.Capsule{
		ID: store.NewID(store.PrefixCapsule), TeamID: team.ID, TemplateID: "tpl-minimal", HostID: h.ID,
		Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 128, DiskSizeMB: 64, TimeoutSec: 600,
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := pool.Client(h)
	if _, err := cl.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
		CapsuleId: c.ID, Template: "minimal", Vcpus: 1, MemoryMb: 128, DiskSizeMb: 64, TimeoutSec: 600,
	})); err != nil {
		t.Fatalf("create capsule: %v", err)
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), testutil.Long)
		defer dcancel()
		_, _ = cl.DestroyCapsule(dctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: c.ID}))
	})
	if _, err := cl.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{
		CapsuleId: c.ID, Cmd: "/bin/sh", Args: []string{"-c", "while :; do :; done"}, Tag: "burn",
	})); err != nil {
		t.Fatalf("start busy loop: %v", err)
	}

	f := &metricsflush.Flusher{Store: st, Agents: pool, Log: log}
	time.Sleep(8 * time.Second)
	n1, err := f.FlushOnce(ctx)
	if err != nil || n1 < 3 {
		t.Fatalf("first flush stored %d, %v; want several seconds", n1, err)
	}
	time.Sleep(4 * time.Second)
	n2, err := f.FlushOnce(ctx)
	if err != nil || n2 < 2 || n2 > 6 {
		t.Fatalf("second flush stored %d, %v; want about the 4 new seconds", n2, err)
	}
	snaps, err := st.ListCapsuleMetricSnapshots(ctx, team.ID, c.ID, store.MinTime, store.MaxTime)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != n1+n2 {
		t.Fatalf("%d snapshots stored, flushes reported %d", len(snaps), n1+n2)
	}
	seen := map[time.Time]bool{}
	var busy int
	for _, s := range snaps {
		if seen[s.TS] {
			t.Fatalf("bucket %v stored twice", s.TS)
		}
		seen[s.TS] = true
		if s.IntervalMS != 1000 || s.MemBytes <= 0 || s.CPUCores < 0 || s.CPUCores > 1.05 {
			t.Fatalf("snapshot %+v", s)
		}
		if s.CPUCores > 0.5 {
			busy++
		}
	}
	// The busy loop holds one of the capsule's CPUs (it may share the
	// host's two cores with other tests, so ask for most, not all).
	if busy < len(snaps)/2 {
		t.Fatalf("only %d of %d seconds show a busy core: %v", busy, len(snaps), fmt.Sprint(snaps))
	}
}
