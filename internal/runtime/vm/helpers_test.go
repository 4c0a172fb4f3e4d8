package vm_test

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
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// Shared across the package's tests: built once in TestMain.
var (
	envdBin   string
	helperBin string
	kernelDir string
	templates template.Store
	setupErr  error
	seq       atomic.Int32
)

const tmplName = "minimal"

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "wrenn-vm-test-")
	if err != nil {
		setupErr = err
		return m.Run()
	}
	defer os.RemoveAll(dir)
	setupErr = setup(dir)
	return m.Run()
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func setup(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	build := func(pkg string) (string, error) {
		bin := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %w: %s", pkg, err, out)
		}
		return bin, nil
	}
	if envdBin, err = build("./cmd/envd"); err != nil {
		return err
	}
	if helperBin, err = build("./internal/runtime/runtimetest/hostilehelper"); err != nil {
		return err
	}
	// The guest kernel: WRENN_TEST_GUEST_KERNEL or scripts/guest-kernel.sh
	// (cached machine-wide in /var/cache/wrenn/guest-kernel). A kernel that
	// cannot be prepared fails the tests: they never skip silently.
	kernelDir = os.Getenv("WRENN_TEST_GUEST_KERNEL")
	if kernelDir == "" {
		out, err := exec.Command(filepath.Join(root, "scripts", "guest-kernel.sh")).Output()
		if err != nil {
			return fmt.Errorf("scripts/guest-kernel.sh failed (the microVM tests need the guest kernel): %w", err)
		}
		kernelDir = strings.TrimSpace(string(out))
	}
	templates = template.Store{Dir: filepath.Join(dir, "templates")}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err = templates.BuildBusybox(ctx, tmplName, "")
	return err
}

// testConfig returns a driver config whose host objects (nft table,
// netns prefix, subnet in 10.140-10.149, sockets, RAM files) belong to
// this driver alone.
func testConfig(t testing.TB, stateDir string) vm.Config {
	t.Helper()
	n := seq.Add(1)
	tag := fmt.Sprintf("wv%d-%d", os.Getpid()%100000, n)
	return vm.Config{
		StateDir:          stateDir,
		Templates:         templates,
		EnvdPath:          envdBin,
		KernelDir:         kernelDir,
		MemDir:            "/dev/shm/" + tag,
		SocketDir:         "/run/" + tag,
		DefaultVCPUs:      1,
		DefaultMemoryMB:   128,
		DefaultDiskSizeMB: 64,
		Network: network.Config{
			Subnet:      netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 140+int(n)%10)),
			Table:       tag,
			NetnsPrefix: tag + "-",
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()})),
	}
}

func logLevel() slog.Level {
	if os.Getenv("WRENN_TEST_VM_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

func newDriver(t testing.TB) *vm.Driver {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	return openDriver(t, testConfig(t, t.TempDir()))
}

// openDriver opens and recovers a driver on cfg; when the test ends its
// capsules, table, sockets and RAM directory go.
func openDriver(t testing.TB, cfg vm.Config) *vm.Driver {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	d, err := vm.New(ctx, cfg)
	if err != nil {
		t.Fatalf("vm.New: %v", err)
	}
	if _, err := d.Recover(ctx); err != nil {
		t.Fatalf("Recover: %v", err)
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
		_ = os.RemoveAll(cfg.MemDir)
		_ = os.RemoveAll(cfg.SocketDir)
	})
	return d
}

// startCapsule creates and starts a capsule (Start waits for envd).
func startCapsule(t testing.TB, d *vm.Driver, spec runtime.Spec) runtime.Info {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	if spec.Template == "" {
		spec.Template = tmplName
	}
	t0 := time.Now()
	if _, err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create %s: %v", spec.ID, err)
	}
	info, err := d.Start(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Start %s: %v", spec.ID, err)
	}
	t.Logf("%s: create+boot to envd in %v", spec.ID, time.Since(t0).Round(time.Millisecond))
	return info
}

func exec1(ctx context.Context, d runtime.Driver, id string, args ...string) (string, error) {
	return runtimetest.EnvdExecFunc(ctx, d, id, args...)
}
