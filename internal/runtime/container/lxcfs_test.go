package container_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// capsuleView is what a capsule's /proc and /sys say about its resources.
type capsuleView struct {
	memTotalKB, procs, nproc int
	online                   string
	uptime                   float64
	stat                     string
}

func readView(t *testing.T, d *container.Driver, id string) capsuleView {
	t.Helper()
	ctx := testutil.Context(t, testutil.Short)
	out := mustExec(ctx, t, d, id, "sh", "-c",
		"awk '/^MemTotal:/ {print $2}' /proc/meminfo; grep -c ^processor /proc/cpuinfo; nproc; "+
			"cat /sys/devices/system/cpu/online; cut -d' ' -f1 /proc/uptime; "+
			"cat /proc/loadavg /proc/swaps /proc/diskstats >/dev/null && grep -c '^cpu[0-9]' /proc/stat")
	f := strings.Fields(out)
	if len(f) != 6 {
		t.Fatalf("view: %q", out)
	}
	var v capsuleView
	v.memTotalKB, _ = strconv.Atoi(f[0])
	v.procs, _ = strconv.Atoi(f[1])
	v.nproc, _ = strconv.Atoi(f[2])
	v.online = f[3]
	v.uptime, _ = strconv.ParseFloat(f[4], 64)
	v.stat = f[5]
	return v
}

// TestLXCFSCapsuleSeesItsOwnLimits: with LXCFS a 1-vCPU, 96 MB capsule
// counts one CPU everywhere (cpuinfo, nproc, /sys online, /proc/stat),
// 96 MB of memory, and an uptime that started with it; on the host those
// show the machine.
func TestLXCFSCapsuleSeesItsOwnLimits(t *testing.T) {
	d := newDriver(t)
	startCapsule(t, d, runtime.Spec{ID: "cl-view", VCPUs: 1, MemoryMB: 96})
	v := readView(t, d, "cl-view")
	if v.memTotalKB != 96*1024 {
		t.Errorf("MemTotal = %d kB, want %d (the capsule's limit)", v.memTotalKB, 96*1024)
	}
	if v.procs != 1 || v.nproc != 1 || v.stat != "1" {
		t.Errorf("1-vCPU capsule sees cpuinfo %d, nproc %d, /proc/stat cpus %s; want 1", v.procs, v.nproc, v.stat)
	}
	if strings.ContainsAny(v.online, "-,") {
		t.Errorf("/sys/devices/system/cpu/online = %q, want one CPU", v.online)
	}
	if v.uptime > 60 {
		t.Errorf("uptime %.1f s in a new capsule", v.uptime)
	}
	// A 2-vCPU capsule is not pinned below the host's CPUs it may use.
	startCapsule(t, d, runtime.Spec{ID: "cl-view2", VCPUs: 2, MemoryMB: 64})
	v2 := readView(t, d, "cl-view2")
	if want := min(2, hostCPUs(t)); v2.procs != want || v2.nproc != want {
		t.Errorf("2-vCPU capsule sees cpuinfo %d, nproc %d; want %d", v2.procs, v2.nproc, want)
	}
	if v2.memTotalKB != 64*1024 {
		t.Errorf("MemTotal = %d kB, want 64 MB", v2.memTotalKB)
	}
}

func hostCPUs(t *testing.T) int {
	b, err := os.ReadFile("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
	if err != nil {
		b, err = os.ReadFile("/sys/devices/system/cpu/online")
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(part, "-")
		a, _ := strconv.Atoi(lo)
		z := a
		if ok {
			z, _ = strconv.Atoi(hi)
		}
		n += z - a + 1
	}
	return n
}

// TestLXCFSOff: DisableLXCFS leaves the host's view (and no daemon).
func TestLXCFSOff(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.DisableLXCFS = true
	d := openDriver(t, cfg)
	if d.LXCFS() {
		t.Fatal("LXCFS on with DisableLXCFS")
	}
	startCapsule(t, d, runtime.Spec{ID: "cl-noview", MemoryMB: 96})
	if v := readView(t, d, "cl-noview"); v.memTotalKB == 96*1024 {
		t.Error("MemTotal is the capsule's limit without LXCFS?")
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "lxcfs")); err == nil {
		t.Error("lxcfs directory exists with DisableLXCFS")
	}
}

// TestLXCFSMissingBinary: a missing lxcfs is a warning, not a failure:
// capsules run with the host's view and LXCFS() says so.
func TestLXCFSMissingBinary(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.LXCFSPath = "/nonexistent/lxcfs"
	ctx := testutil.Context(t, testutil.Long)
	d, err := container.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New without lxcfs: %v", err)
	}
	if d.LXCFS() {
		t.Fatal("LXCFS() true without the binary")
	}
	t.Cleanup(func() {
		_ = d.Close()
		list, _ := d.List(ctx)
		for _, c := range list {
			_ = d.Destroy(ctx, c.ID)
		}
		_ = d.Network().RemoveTable()
		removeCgroupParent(cfg.CgroupParent)
	})
	if _, err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	startCapsule(t, d, runtime.Spec{ID: "cl-nolxcfs"})
}

func removeCgroupParent(parent string) {
	_ = os.Remove("/sys/fs/cgroup/unified" + parent)
	for _, sub := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc", ""} {
		_ = os.Remove(filepath.Join("/sys/fs/cgroup", sub, parent))
	}
}

// lxcfsPID reads the daemon's pid file under a driver state directory.
func lxcfsPID(t *testing.T, stateDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "lxcfs", "lxcfs.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func processAlive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestLXCFSAgentRestart: the daemon outlives the driver while capsules run
// (they keep their view), the next driver adopts it, and it stops with the
// last capsule once the driver is closed.
func TestLXCFSAgentRestart(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	d1 := openDriver(t, cfg)
	startCapsule(t, d1, runtime.Spec{ID: "cl-keep", MemoryMB: 80})
	pid := lxcfsPID(t, cfg.StateDir)
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if !processAlive(pid) {
		t.Fatal("lxcfs stopped with a capsule still running")
	}
	d2 := openDriver(t, cfg)
	if got := lxcfsPID(t, cfg.StateDir); got != pid {
		t.Errorf("new driver started lxcfs %d instead of adopting %d", got, pid)
	}
	if v := readView(t, d2, "cl-keep"); v.memTotalKB != 80*1024 {
		t.Errorf("after restart MemTotal = %d kB", v.memTotalKB)
	}
	startCapsule(t, d2, runtime.Spec{ID: "cl-new", MemoryMB: 72})
	if v := readView(t, d2, "cl-new"); v.memTotalKB != 72*1024 {
		t.Errorf("new capsule MemTotal = %d kB", v.memTotalKB)
	}
	ctx := testutil.Context(t, testutil.Long)
	_ = d2.Close()
	for _, id := range []string{"cl-keep", "cl-new"} {
		if err := d2.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitGone(t, pid)
	if out, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(out), filepath.Join(cfg.StateDir, "lxcfs")) {
		t.Error("lxcfs mount left after the last capsule of a closed driver")
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200 && processAlive(pid); i++ {
		time.Sleep(25 * time.Millisecond)
	}
	if processAlive(pid) {
		t.Errorf("lxcfs %d still running", pid)
	}
}

// TestLXCFSStaleMountRecovered: a daemon that died (crashed agent host,
// OOM) leaves a FUSE mount answering ENOTCONN; the next driver unmounts
// it and starts a new daemon, and new capsules get the view again.
func TestLXCFSStaleMountRecovered(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	d1 := openDriver(t, cfg)
	pid := lxcfsPID(t, cfg.StateDir)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	_, err := os.ReadFile(filepath.Join(cfg.StateDir, "lxcfs", "mnt", "proc", "meminfo"))
	t.Logf("dead mount reads: %v", err)
	_ = d1.Close()
	d2 := openDriver(t, cfg) // fails unless lxcfs runs again
	if got := lxcfsPID(t, cfg.StateDir); got == pid {
		t.Fatal("same pid")
	}
	startCapsule(t, d2, runtime.Spec{ID: "cl-fresh", MemoryMB: 88})
	if v := readView(t, d2, "cl-fresh"); v.memTotalKB != 88*1024 {
		t.Errorf("MemTotal = %d kB", v.memTotalKB)
	}
	n := strings.Count(mountinfo(t), filepath.Join(cfg.StateDir, "lxcfs", "mnt")+" ")
	if n != 1 {
		t.Errorf("%d lxcfs mounts, want 1", n)
	}
}

func mountinfo(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLXCFSAcrossCRIURestore: a capsule checkpointed with CRIU (the LXCFS
// files are bind mounts runc declares external) comes back with its
// processes and its own view. Needs WRENN_TEST_CRIU like the CRIU tests.
func TestLXCFSAcrossCRIURestore(t *testing.T) {
	d := criuDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	info := startCapsule(t, d, runtime.Spec{ID: "cl-lxcfs-criu", MemoryMB: 112, VCPUs: 1})
	startCounter(ctx, t, d, info)
	snap, err := d.Snapshot(ctx, "cl-lxcfs-criu")
	if err != nil || !snap.MemoryKept {
		t.Fatalf("Snapshot: %+v %v", snap, err)
	}
	info, err = d.Restore(ctx, snap)
	if err != nil || !info.MemoryKept {
		t.Fatalf("Restore: %+v %v (memory must be kept with LXCFS mounts)", info, err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, d, "cl-lxcfs-criu"); v.memTotalKB != 112*1024 || v.nproc != 1 || v.procs != 1 {
		t.Errorf("after restore: %+v", v)
	}
}

// TestLXCFSWarmPool: a capsule taken from the warm pool has the view too.
func TestLXCFSWarmPool(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	d.SetWarmPool(tmplName, 1)
	testutil.Eventually(t, testutil.Long, func() bool { return d.WarmPoolSize(tmplName) == 1 }, "pool filled")
	info, err := d.Take(ctx, runtime.Spec{ID: "cl-pooled", Template: tmplName})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if v := readView(t, d, "cl-pooled"); v.memTotalKB != info.MemoryMB*1024 || v.nproc != 1 {
		t.Errorf("pooled capsule (%d MB): %+v", info.MemoryMB, v)
	}
}

// TestLXCFSFileOpenAtCheckpoint: a process holding an LXCFS file open
// when the capsule is paused to disk comes back with its memory (CRIU
// reopens the file through the restored bind mount).
func TestLXCFSFileOpenAtCheckpoint(t *testing.T) {
	d := criuDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	info := startCapsule(t, d, runtime.Spec{ID: "cl-lxcfs-open", MemoryMB: 104})
	cl, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	bg := "setsid sh -c 'exec sleep 1000 < /proc/meminfo' </dev/null >/dev/null 2>&1 &"
	if res, err := cl.Exec(ctx, &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", bg}}, envdclient.ExecOptions{Timeout: testutil.Short}); err != nil || res.ExitCode != 0 {
		t.Fatalf("start holder: %v %+v", err, res)
	}
	snap, err := d.Snapshot(ctx, "cl-lxcfs-open")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	info, err = d.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if !snap.MemoryKept || !info.MemoryKept {
		t.Errorf("memory kept at snapshot: %v, after restore: %v", snap.MemoryKept, info.MemoryKept)
	}
	if out := mustExec(ctx, t, d, "cl-lxcfs-open", "sh", "-c", "ps -o comm | grep -c '^sleep'"); strings.TrimSpace(out) != "1" {
		t.Errorf("the holder process is gone after restore: %q", out)
	}
	if v := readView(t, d, "cl-lxcfs-open"); v.memTotalKB != 104*1024 {
		t.Errorf("after restore: %+v", v)
	}
}
