package container_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// Shared across the package's tests: built once in TestMain.
var (
	envdBin   string
	helperBin string // runtimetest/hostilehelper, for the hostile-tenant suite
	probeBin  string // testdata/sysprobe, static
	templates template.Store
	setupErr  error
	seq       atomic.Int32
)

const tmplName = "minimal"

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "wrenn-container-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	envdBin, setupErr = buildEnvd(dir)
	if setupErr == nil {
		helperBin, setupErr = buildStatic(dir, "./internal/runtime/runtimetest/hostilehelper")
	}
	if setupErr == nil {
		probeBin, setupErr = buildStatic(dir, "./internal/runtime/container/testdata/sysprobe")
	}
	if setupErr == nil {
		templates = template.Store{Dir: filepath.Join(dir, "templates")}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, setupErr = templates.BuildBusybox(ctx, tmplName, "")
		cancel()
	}
	return m.Run()
}

// buildEnvd builds cmd/envd statically into dir.
func buildEnvd(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	if _, err := os.Stat(filepath.Join(root, "cmd", "envd")); err != nil {
		return "", fmt.Errorf("cmd/envd does not exist in %s: the container driver needs envd as PID 1 (%w)", root, err)
	}
	bin := filepath.Join(dir, "envd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/envd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build envd: %w: %s", err, out)
	}
	return bin, nil
}

// buildStatic builds the main package pkg (relative to the module root)
// statically into dir.
func buildStatic(dir, pkg string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %w: %s", pkg, err, out)
	}
	return bin, nil
}

// testConfig returns a driver config whose host objects (cgroup parent,
// nft table, subnet) belong to this test alone.
func testConfig(t testing.TB, stateDir string) container.Config {
	t.Helper()
	n := seq.Add(1)
	tag := fmt.Sprintf("wt%d-%d", os.Getpid()%100000, n)
	return container.Config{
		StateDir:          stateDir,
		Templates:         templates,
		EnvdPath:          envdBin,
		DefaultMemoryMB:   128,
		MinMemoryMB:       16, // the memory-limit tests use less than the product minimum
		DefaultDiskSizeMB: 64,
		PidsLimit:         128,
		CgroupParent:      "/" + tag,
		Network: network.Config{
			Subnet:      netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 210+int(n)%40)),
			Table:       tag,
			NetnsPrefix: tag + "-",
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// newDriver returns a recovered driver whose capsules, pools and nft table
// are all removed when the test ends.
func newDriver(t testing.TB) *container.Driver {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	return openDriver(t, cfg)
}

// openDriver opens (and recovers) a driver on cfg and registers cleanup.
func openDriver(t testing.TB, cfg container.Config) *container.Driver {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	d, err := container.New(ctx, cfg)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	if _, err := d.Recover(ctx); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if !cfg.DisableLXCFS && !d.LXCFS() {
		_ = d.Close()
		t.Fatalf("LXCFS is not running (see the driver's warning above): install it with scripts/deps.sh (apt-get install lxcfs)")
	}
	t.Cleanup(func() {
		_ = d.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Long)
		defer cancel()
		list, _ := d.List(ctx)
		for _, c := range list {
			_ = d.Destroy(ctx, c.ID)
		}
		_ = d.Network().RemoveTable()
		_ = os.Remove("/sys/fs/cgroup/unified" + cfg.CgroupParent)
		for _, sub := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc", ""} {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", sub, cfg.CgroupParent))
		}
	})
	return d
}

// runcExec runs a command inside a capsule as root, through envd (the path
// user commands take; `runc exec` of Debian's runc 1.1.5 cannot join a
// capsule whose network namespace is outside its user namespace).
func runcExec(ctx context.Context, d *container.Driver, id string, args ...string) (string, error) {
	return runtimetest.EnvdExecFunc(ctx, d, id, args...)
}

// startCapsule creates and starts a capsule and waits for envd.
func startCapsule(t testing.TB, d *container.Driver, spec runtime.Spec) runtime.Info {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	if spec.Template == "" {
		spec.Template = tmplName
	}
	if _, err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create %s: %v", spec.ID, err)
	}
	info, err := d.Start(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Start %s: %v", spec.ID, err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatalf("WaitReady %s: %v", spec.ID, err)
	}
	return info
}
