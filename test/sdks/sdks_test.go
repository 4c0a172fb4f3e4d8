// Package sdks tests the Python (sdk/python) and TypeScript (sdk/typescript)
// SDKs against a real `wrenn up`, and runs one scenario (create → exec →
// stream → files round trip → pause → resume → delete) through the four
// clients: the CLI, the Go SDK, the Python SDK and the TypeScript SDK.
//
// It needs root (wrenn up), Debian's /usr/bin/python3 with python3-httpx,
// python3-websockets, python3-pytest, python3-yaml, python3-build and
// python3-hatchling (scripts/deps.sh), and node/npm: anything missing fails
// the test with what to install, never skips it.
package sdks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

const python = "/usr/bin/python3" // Debian's: the one with python3-httpx & co.

var (
	repoRoot = func() string {
		_, f, _, _ := runtime.Caller(0)
		return filepath.Clean(filepath.Join(filepath.Dir(f), "..", ".."))
	}()
	pyDir = filepath.Join(repoRoot, "sdk", "python")
	tsDir = filepath.Join(repoRoot, "sdk", "typescript")
)

// up is the package's one `wrenn up`, started by the first test that needs it.
type up struct {
	bin, url, key, home string
	args                []string
	cmd                 *exec.Cmd
	exited              chan error
	mu                  sync.Mutex
	out                 bytes.Buffer
}

func (u *up) output() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.out.String()
}

var (
	upOnce sync.Once
	theUp  *up
	upErr  error
	binDir string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theUp != nil {
		if err := theUp.shutdown(); err != nil {
			fmt.Fprintln(os.Stderr, "sdks: cleanup:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var keyRE = regexp.MustCompile(`Admin API key: (wrn_[a-z0-9]+)`)

// server starts `wrenn up` once (own home, --instance, --subnet, the
// minimal template, --on-exit destroy) and returns it.
func server(t testing.TB) *up {
	t.Helper()
	testutil.RequireRoot(t)
	if testing.Short() {
		// make test runs ./... twice (then -race -short); the suites run in the first pass.
		t.Skip("the SDK suites start wrenn up, npm and pytest; they run without -short (make test's first pass)")
	}
	upOnce.Do(func() { theUp, upErr = startUp() })
	if upErr != nil {
		t.Fatal(upErr)
	}
	return theUp
}

func startUp() (*up, error) {
	var err error
	binDir, err = os.MkdirTemp("", "wrenn-sdks-bin-")
	if err != nil {
		return nil, err
	}
	for _, b := range []struct{ out, pkg string }{
		{"wrenn", "github.com/wrenn-dev/wrenn/cmd/wrenn"},
		{"envd", "github.com/wrenn-dev/wrenn/cmd/envd"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %w: %s", b.pkg, err, out)
		}
	}
	home, err := os.MkdirTemp("", "wrenn-sdks-home-")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	u := &up{
		bin: filepath.Join(binDir, "wrenn"), url: "http://" + addr, home: home, exited: make(chan error, 1),
		args: []string{
			"--home", home, "--listen", addr, "--no-base", "--on-exit", "destroy", "--warm-pool", "off", "--cold-spares", "0", "--webhook-allow-private",
			"--instance", fmt.Sprintf("wsdk%d", os.Getpid()%100000), "--subnet", "10.165.0.0/16",
		},
	}
	u.cmd = exec.Command(u.bin, append([]string{"up"}, u.args...)...)
	pr, pw := io.Pipe()
	u.cmd.Stdout, u.cmd.Stderr = pw, pw
	if err := u.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { u.exited <- u.cmd.Wait(); _ = pw.Close() }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			u.mu.Lock()
			u.out.WriteString(sc.Text() + "\n")
			u.mu.Unlock()
			if strings.HasPrefix(sc.Text(), "Stop with Ctrl-C") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case err := <-u.exited:
		u.exited <- err
		return nil, fmt.Errorf("wrenn up exited before it was ready: %w\n%s", err, u.output())
	case <-time.After(testutil.Long):
		_ = u.shutdown()
		return nil, fmt.Errorf("wrenn up not ready within %v:\n%s", testutil.Long, u.output())
	}
	m := keyRE.FindStringSubmatch(u.output())
	if m == nil {
		_ = u.shutdown()
		return nil, fmt.Errorf("no admin key in wrenn up's output:\n%s", u.output())
	}
	u.key = m[1]
	return u, nil
}

// shutdown stops wrenn up (destroying its capsules), then starts it once
// more over the same home with --on-exit destroy and stops it, so capsules
// left by a crash are destroyed with the instance's host objects too.
func (u *up) shutdown() error {
	var errs []error
	_ = u.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-u.exited:
		if err != nil {
			errs = append(errs, fmt.Errorf("wrenn up exited with %w:\n%s", err, u.output()))
		}
	case <-time.After(3 * time.Minute):
		_ = u.cmd.Process.Kill()
		errs = append(errs, fmt.Errorf("wrenn up did not stop within 3 minutes"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, u.bin, append([]string{"up"}, u.args...)...)
	pr, err := cmd.StdoutPipe()
	if err == nil {
		cmd.Stderr = cmd.Stdout
		err = cmd.Start()
	}
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var out strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "Stop with Ctrl-C") {
			_ = cmd.Process.Signal(syscall.SIGINT)
		}
	}
	if err := cmd.Wait(); err != nil {
		errs = append(errs, fmt.Errorf("cleanup wrenn up: %w\n%s", err, out.String()))
	}
	_ = os.RemoveAll(u.home)
	return errors.Join(errs...)
}

// env is the environment the SDK suites and scenarios run with.
func (u *up) env() []string {
	return append(os.Environ(), "WRENN_URL="+u.url, "WRENN_API_KEY="+u.key, "PYTHONPATH="+filepath.Join(pyDir, "src"),
		"PYTHONDONTWRITEBYTECODE=1")
}

// run runs a command, failing the test with its output when it fails.
func run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// requirePython fails (never skips) when Debian's python3 or one of the
// Debian packages the Python SDK is tested with is missing.
func requirePython(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is missing: install python3 and run scripts/deps.sh", python)
	}
	for mod, pkg := range map[string]string{
		"httpx": "python3-httpx", "websockets": "python3-websockets", "pytest": "python3-pytest",
		"yaml": "python3-yaml", "build": "python3-build", "hatchling": "python3-hatchling",
	} {
		if out, err := exec.Command(python, "-c", "import "+mod).CombinedOutput(); err != nil {
			t.Fatalf("%s cannot import %s (%v: %s): apt-get install %s (scripts/deps.sh)", python, mod, err, bytes.TrimSpace(out), pkg)
		}
	}
}

var (
	npmOnce sync.Once
	npmErr  error
)

// requireNode fails when node or npm is missing, then installs the
// TypeScript SDK's locked dependencies (once: skipped while node_modules
// matches package-lock.json) and builds it.
func requireNode(t testing.TB) {
	t.Helper()
	for _, b := range []string{"node", "npm"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is missing: install nodejs and npm (scripts/deps.sh)", b)
		}
	}
	npmOnce.Do(func() { npmErr = npmBuild() })
	if npmErr != nil {
		t.Fatal(npmErr)
	}
}

func npmBuild() error {
	lock, err := os.ReadFile(filepath.Join(tsDir, "package-lock.json"))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(lock)
	stamp := filepath.Join(tsDir, "node_modules", ".wrenn-lock-sha256")
	if b, err := os.ReadFile(stamp); err != nil || string(b) != hex.EncodeToString(sum[:]) {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--prefer-offline")
		cmd.Dir = tsDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("npm ci in %s: %w\n%s", tsDir, err, out)
		}
		if err := os.WriteFile(stamp, []byte(hex.EncodeToString(sum[:])), 0o644); err != nil {
			return err
		}
	}
	cmd := exec.Command("npm", "run", "build")
	cmd.Dir = tsDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm run build: %w\n%s", err, out)
	}
	return nil
}

// TestPythonSDK runs sdk/python's pytest suite (static checks, wheel build
// and the live tests) with Debian's python3-pytest.
func TestPythonSDK(t *testing.T) {
	u := server(t)
	requirePython(t)
	out := run(t, pyDir, u.env(), python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests")
	t.Logf("pytest:\n%s", lastLines(out, 3))
}

// TestTypeScriptSDK builds sdk/typescript and runs its node --test suites
// (live tests, npm pack --dry-run, generated types fresh).
func TestTypeScriptSDK(t *testing.T) {
	u := server(t)
	requireNode(t)
	out := run(t, tsDir, u.env(), "node", "--test", "test/")
	if !strings.Contains(out, "# fail 0") {
		t.Fatalf("node --test:\n%s", out)
	}
	t.Logf("node --test:\n%s", lastLines(out, 8))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestFourClients runs the scenario of docs/SDK.md through the CLI, the Go
// SDK, the Python SDK (sdk/python/examples/scenario.py) and the TypeScript
// SDK (sdk/typescript/examples/scenario.mjs).
func TestFourClients(t *testing.T) {
	u := server(t)
	t.Run("CLI", func(t *testing.T) { cliScenario(t, u) })
	t.Run("Go", func(t *testing.T) { goScenario(t, u) })
	t.Run("Python", func(t *testing.T) {
		requirePython(t)
		if out := run(t, pyDir, u.env(), python, "examples/scenario.py"); !strings.Contains(out, "scenario ok") {
			t.Fatalf("scenario.py: %s", out)
		}
	})
	t.Run("TypeScript", func(t *testing.T) {
		requireNode(t)
		if out := run(t, tsDir, u.env(), "node", "examples/scenario.mjs"); !strings.Contains(out, "scenario ok") {
			t.Fatalf("scenario.mjs: %s", out)
		}
	})
}

func cliScenario(t *testing.T, u *up) {
	config := filepath.Join(t.TempDir(), "config")
	env := append(os.Environ(), "WRENN_CONFIG="+config)
	cli := func(args ...string) string { return run(t, repoRoot, env, u.bin, args...) }
	cli("login", "--url", u.url, "--key", u.key)
	id := strings.TrimSpace(cli("capsule", "create", "--template", "minimal", "-q"))
	if got := cli("capsule", "exec", id, "--", "echo", "hello"); got != "hello\n" {
		t.Errorf("exec: %q", got)
	}
	// capsule exec streams its output (WebSocket exec/stream).
	if got := cli("capsule", "exec", id, "--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done"); got != "line 1\nline 2\nline 3\n" {
		t.Errorf("streamed exec: %q", got)
	}
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	local := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cli("capsule", "cp", local, id+":/root/data.bin")
	back := filepath.Join(t.TempDir(), "back.bin")
	cli("capsule", "cp", id+":/root/data.bin", back)
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Errorf("file round trip differs (%d bytes)", len(got))
	}
	cli("capsule", "pause", id)
	if s := cli("capsule", "get", id, "--json"); !strings.Contains(s, `"status": "paused"`) && !strings.Contains(s, `"status":"paused"`) {
		t.Errorf("after pause: %s", s)
	}
	cli("capsule", "resume", id)
	cli("capsule", "cp", id+":/root/data.bin", back)
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Errorf("file after resume differs (%d bytes)", len(got))
	}
	cli("capsule", "rm", id)
	cmd := exec.Command(u.bin, "capsule", "get", id)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not found") {
		t.Errorf("get after rm: %v %s", err, out)
	}
}

func goScenario(t *testing.T, u *up) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Long)
	defer cancel()
	c, err := wrenn.New(u.url, u.key)
	if err != nil {
		t.Fatal(err)
	}
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"hello"}})
	if err != nil || res.Stdout != "hello\n" {
		t.Fatalf("exec: %+v, %v", res, err)
	}
	var lines bytes.Buffer
	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "sh", Args: []string{"-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done"}}, &lines, io.Discard)
	if err != nil || st.ExitCode != 0 || lines.String() != "line 1\nline 2\nline 3\n" {
		t.Fatalf("stream: %+v %q %v", st, lines.String(), err)
	}
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	if _, err := c.Files.Write(ctx, capsule.ID, "/root/data.bin", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	if _, err := c.Files.Read(ctx, capsule.ID, "/root/data.bin", &back); err != nil || !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("read back: %d bytes, %v", back.Len(), err)
	}
	if p, err := c.Pause(ctx, capsule.ID, wrenn.PauseOptions{}); err != nil || p.Status != "paused" {
		t.Fatalf("pause: %v", err)
	}
	if r, err := c.Resume(ctx, capsule.ID, 0); err != nil || r.Status != "running" {
		t.Fatalf("resume: %v", err)
	}
	back.Reset()
	if _, err := c.Files.Read(ctx, capsule.ID, "/root/data.bin", &back); err != nil || !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("read after resume: %d bytes, %v", back.Len(), err)
	}
	if err := c.Delete(ctx, capsule.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, capsule.ID); !wrenn.IsNotFound(err) {
		t.Fatalf("get after delete: %v", err)
	}
}
