package up_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up"
	"github.com/wrenn-dev/wrenn/internal/up/uptest"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

var (
	envdOnce sync.Once
	envdPath string
	envdErr  error
	envdDir  string
)

func envd(t testing.TB) string {
	t.Helper()
	envdOnce.Do(func() {
		envdDir, envdErr = os.MkdirTemp("", "wrenn-up-test-")
		if envdErr == nil {
			envdPath, envdErr = uptest.BuildEnvd(context.Background(), envdDir)
		}
	})
	if envdErr != nil {
		t.Fatal(envdErr)
	}
	return envdPath
}

// TestMain also checks that stopped Apps leave no goroutine behind.
func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	code := m.Run()
	if envdDir != "" {
		_ = os.RemoveAll(envdDir)
	}
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const instance = "wupt"

func config(t testing.TB, home string, onExit up.OnExit, out io.Writer) up.Config {
	return up.Config{
		Home: home, Listen: "127.0.0.1:0", ProxyListen: "127.0.0.1:0", OnExit: onExit, EnvdPath: envd(t), DefaultDiskSizeMB: 256,
		Instance: fmt.Sprintf("%s%d", instance, os.Getpid()%100000), Subnet: netip.MustParsePrefix("10.250.0.0/16"),
		Out: out, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		WarmPools: nil, // off unless a test is about warm pools
	}
}

// started is an App running in the background.
type started struct {
	app  *up.App
	stop context.CancelFunc
	done chan error
}

func start(t *testing.T, cfg up.Config) *started {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	app, err := up.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &started{app: app, stop: cancel, done: make(chan error, 1)}
	go func() { s.done <- app.Run(runCtx) }()
	select {
	case <-app.Ready():
	case err := <-s.done:
		t.Fatalf("stopped before ready: %v", err)
	case <-ctx.Done():
		cancel()
		t.Fatal("not ready in time")
	}
	return s
}

func (s *started) shutdown(t *testing.T) {
	t.Helper()
	s.stop()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("Run did not return")
	}
}

func TestRestartKeepsKeyHostAndCapsules(t *testing.T) {
	testutil.RequireRoot(t)
	home := t.TempDir()
	var out syncBuffer
	first := start(t, config(t, home, up.OnExitPause, &out))
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			first.shutdown(t)
		}
		// Destroy whatever is left over from a failed run.
		last := start(t, config(t, home, up.OnExitDestroy, io.Discard))
		last.shutdown(t)
	})
	if !first.app.FirstStart() {
		t.Error("FirstStart = false on a fresh home")
	}
	key := first.app.AdminKey()
	if !strings.Contains(out.String(), key) {
		t.Errorf("first start did not print the admin key:\n%s", out.String())
	}
	if !strings.Contains(out.String(), first.app.ProxyURL()+"/proxy/") {
		t.Errorf("first start did not print the port proxy's URL:\n%s", out.String())
	}
	st, err := os.Stat(up.AdminKeyPath(home))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin.key: %v; want mode 0600", err)
	}
	for _, f := range []string{"server.secret", "agent.secret", "host.json"} {
		if st, err := os.Stat(filepath.Join(home, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v; want mode 0600", f, err)
		}
	}
	ctx := testutil.Context(t, testutil.Long)
	c, err := wrenn.New(first.app.URL(), key)
	if err != nil {
		t.Fatal(err)
	}
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "sh", Args: []string{"-c", "echo kept > /root/f"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec: %+v %v", res, err)
	}
	hostID := first.app.HostID()
	first.shutdown(t)
	stopped = true
	if !strings.Contains(out.String(), "1 capsule(s) paused.") {
		t.Errorf("stop did not report the paused capsule:\n%s", out.String())
	}

	var out2 syncBuffer
	second := start(t, config(t, home, up.OnExitDestroy, &out2))
	defer second.shutdown(t)
	if second.app.FirstStart() || second.app.AdminKey() != key || second.app.HostID() != hostID {
		t.Errorf("restart: first=%v, key kept=%v, host kept=%v; want a reuse of all", second.app.FirstStart(), second.app.AdminKey() == key, second.app.HostID() == hostID)
	}
	if strings.Contains(out2.String(), "wrn_") {
		t.Errorf("the restart printed a key:\n%s", out2.String())
	}
	c2, _ := wrenn.New(second.app.URL(), key)
	got, err := c2.Get(ctx, capsule.ID)
	if err != nil || got.Status != wrenn.StatusPaused {
		t.Fatalf("after restart: %+v, %v; want the capsule paused", got, err)
	}
	if _, err := c2.Resume(ctx, capsule.ID, 0); err != nil {
		t.Fatal(err)
	}
	res, err := c2.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "cat", Args: []string{"/root/f"}})
	if err != nil || res.Stdout != "kept\n" {
		t.Errorf("re-adopted capsule: %+v, %v", res, err)
	}
}

func TestDestroyOnExitLeavesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := config(t, t.TempDir(), up.OnExitDestroy, io.Discard)
	cfg.Instance += "d"
	cfg.Subnet = netip.MustParsePrefix("10.254.0.0/16")
	cfg.WarmPools = map[string]int{up.MinimalTemplate: 1}
	s := start(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	c, _ := wrenn.New(s.app.URL(), s.app.AdminKey())
	for range 2 {
		if _, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate}); err != nil {
			t.Fatal(err)
		}
	}
	hasTable := func() bool {
		nft, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tables, err := nft.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			if tb.Name == cfg.Instance {
				return true
			}
		}
		return false
	}
	if !hasTable() {
		t.Fatalf("no nftables table %s while capsules run: the check below would prove nothing", cfg.Instance)
	}
	s.shutdown(t)
	if hasTable() {
		t.Errorf("nftables table %s left behind", cfg.Instance)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), cfg.Instance+"-") {
			t.Errorf("network namespace %s left behind", e.Name())
		}
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + cfg.Instance); len(m) > 0 {
		t.Errorf("cgroups left behind: %v", m)
	}
	if b, _ := os.ReadFile("/proc/mounts"); bytes.Contains(b, []byte(cfg.Home)) {
		t.Errorf("mounts under %s left behind", cfg.Home)
	}
}

func TestForeignAdminKeyIsRefused(t *testing.T) {
	home := t.TempDir()
	ctx := testutil.Context(t, testutil.Long)
	st, err := controlplane.OpenStore(ctx, filepath.Join(home, "wrenn.db"))
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	if err := os.WriteFile(up.AdminKeyPath(home), []byte("wrn_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := up.Config{Home: home, EnvdPath: "/nonexistent/envd", Listen: "127.0.0.1:0", ProxyListen: "127.0.0.1:0"}
	_, err = up.New(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "holds a key this database does not know") {
		t.Errorf("New with a foreign admin.key: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	ctx := testutil.Context(t, testutil.Short)
	for _, tt := range []struct {
		name string
		cfg  up.Config
		want string
	}{
		{"no home", up.Config{EnvdPath: "x"}, "Home is required"},
		{"no envd", up.Config{Home: t.TempDir()}, "EnvdPath is required"},
		{"bad on-exit", up.Config{Home: t.TempDir(), EnvdPath: "x", OnExit: "explode"}, "on-exit must be pause or destroy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := up.New(ctx, tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v; want %q", err, tt.want)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestListenOnAllInterfacesGivesALoopbackURL(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := config(t, t.TempDir(), up.OnExitDestroy, io.Discard)
	cfg.Listen = "0.0.0.0:0"
	cfg.ProxyListen = "0.0.0.0:0"
	cfg.Instance += "a"
	s := start(t, cfg)
	defer s.shutdown(t)
	if !strings.HasPrefix(s.app.URL(), "http://127.0.0.1:") {
		t.Errorf("URL = %s; want a loopback URL", s.app.URL())
	}
	if !strings.HasPrefix(s.app.ProxyURL(), "http://127.0.0.1:") || s.app.ProxyURL() == s.app.URL() {
		t.Errorf("ProxyURL = %s; want a loopback URL other than the API's", s.app.ProxyURL())
	}
	// The port proxy answers on its own listener (an unknown capsule), the
	// API's listener has no /proxy/ route; both with the error body.
	for _, base := range []string{s.app.ProxyURL(), s.app.URL()} {
		req, _ := http.NewRequestWithContext(testutil.Context(t, testutil.Short), "GET", base+"/proxy/cl-nosuchcapsule00000/8080/", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Code string }
		err = json.NewDecoder(res.Body).Decode(&e)
		_ = res.Body.Close()
		if res.StatusCode != http.StatusNotFound || err != nil || e.Code != "not_found" {
			t.Errorf("%s/proxy/…: %d %v %+v, want 404 not_found", base, res.StatusCode, err, e)
		}
	}
	c, _ := wrenn.New(s.app.URL(), s.app.AdminKey())
	if _, err := c.Me(testutil.Context(t, testutil.Short)); err != nil {
		t.Error(err)
	}
}
