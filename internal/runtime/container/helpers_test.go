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
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// Shared across the package's tests: built once in TestMain.
var (
	envdBin   string
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
		probeBin, setupErr = buildSysprobe(dir)
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

// buildSysprobe builds testdata/sysprobe (the seccomp suite's helper)
// statically into dir.
func buildSysprobe(dir string) (string, error) {
	bin := filepath.Join(dir, "sysprobe")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/sysprobe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build sysprobe: %w: %s", err, out)
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

// runcExec runs a command inside a capsule with `runc exec`.
func runcExec(ctx context.Context, d *container.Driver, id string, args ...string) (string, error) {
	key, err := d.Key(id)
	if err != nil {
		return "", err
	}
	full := append([]string{"--root", d.RuncRoot(), "exec", key}, args...)
	out, err := exec.CommandContext(ctx, "runc", full...).CombinedOutput()
	return string(out), err
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
