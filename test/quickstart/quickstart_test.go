// Package quickstart tests what the README's quick start tells a new user
// to do, the way they would do it: build the wrenn binary, run `wrenn up`
// in a fresh WRENN_HOME, log in with the key it prints and drive capsules
// with the CLI; then start `wrenn up` again over the same home and check
// that the key and the capsules survived.
package quickstart

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// bins builds wrenn and envd once per test binary.
var (
	binsOnce sync.Once
	binDir   string
	binsErr  error
)

func buildBins(t *testing.T) string {
	t.Helper()
	binsOnce.Do(func() {
		binDir, binsErr = os.MkdirTemp("", "wrenn-quickstart-bin-")
		if binsErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg string }{
			{"wrenn", "github.com/wrenn-dev/wrenn/cmd/wrenn"},
			{"envd", "github.com/wrenn-dev/wrenn/cmd/envd"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binsErr = fmt.Errorf("go build %s: %w: %s", b.pkg, err, out)
				return
			}
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// server is one `wrenn up` process.
type server struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	lines  chan string
	exited chan error
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// startUp starts `wrenn up` and waits for its "Wrenn is up" banner.
func startUp(t *testing.T, wrenn string, args ...string) (*server, time.Duration) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(wrenn, append([]string{"up"}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	s := &server{cmd: cmd, lines: make(chan string, 1024), exited: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.exited <- cmd.Wait()
		_ = pw.Close()
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.mu.Lock()
			s.out.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			select {
			case s.lines <- sc.Text():
			default:
			}
		}
	}()
	deadline := time.After(testutil.Long)
	var ready time.Duration
	for {
		select {
		case l := <-s.lines:
			if strings.HasPrefix(l, "Wrenn is up at ") {
				ready = time.Since(start)
			}
			// The banner ends with the line about stopping.
			if ready > 0 && strings.HasPrefix(l, "Stop with Ctrl-C") {
				return s, ready
			}
		case err := <-s.exited:
			s.exited <- err
			t.Fatalf("wrenn up exited before it was ready: %v\n%s", err, s.output())
		case <-deadline:
			s.stop(t)
			t.Fatalf("wrenn up not ready within %v:\n%s", testutil.Long, s.output())
		}
	}
}

// stop sends SIGINT and waits; the process must exit 0.
func (s *server) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-s.exited:
		s.exited <- err
		if err != nil {
			t.Errorf("wrenn up exited with %v:\n%s", err, s.output())
		}
	case <-time.After(3 * time.Minute):
		_ = s.cmd.Process.Kill()
		t.Errorf("wrenn up did not stop within 3 minutes:\n%s", s.output())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// cli runs the wrenn CLI with the test's client config.
type cli struct {
	t      *testing.T
	wrenn  string
	config string
}

func (c cli) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Long)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.wrenn, args...)
	cmd.Env = append(os.Environ(), "WRENN_CONFIG="+c.config)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		c.t.Fatalf("wrenn %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// ok runs a command that must succeed and returns its stdout.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("wrenn %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (c cli) status(id string) string {
	c.t.Helper()
	var capsule struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(c.ok("capsule", "get", id, "--json")), &capsule); err != nil {
		c.t.Fatal(err)
	}
	return capsule.Status
}

var keyRE = regexp.MustCompile(`Admin API key: (wrn_[a-z0-9]+)`)

func TestQuickStart(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildBins(t)
	wrenn := filepath.Join(bin, "wrenn")
	if out, err := exec.Command(wrenn, "up", "--help").CombinedOutput(); err != nil {
		t.Fatalf("the wrenn binary has no `up` command (%v: %s): NewRoot in internal/cli/cli.go must add "+
			"newLoginCmd(), newCapsuleCmd(), newTemplateCmd() and newUpCmd()", err, out)
	}
	home := t.TempDir()
	addr, proxyAddr := freeAddr(t), freeAddr(t)
	instance := fmt.Sprintf("wqs%d", os.Getpid()%100000)
	upArgs := []string{"--home", home, "--listen", addr, "--proxy-listen", proxyAddr, "--no-base", "--instance", instance, "--subnet", "10.253.0.0/16", "--warm-pool", "off", "--cold-spares", "0"}
	t.Cleanup(func() {
		// Whatever happened, destroy every capsule this home still has: a
		// start with --on-exit destroy re-adopts them, and its stop
		// removes them with the instance's host objects.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, wrenn, append([]string{"up", "--on-exit", "destroy"}, upArgs...)...)
		pr, err := cmd.StdoutPipe()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		var out strings.Builder
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "Wrenn is up") {
				_ = cmd.Process.Signal(syscall.SIGINT)
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("cleanup wrenn up: %v\n%s", err, out.String())
		}
	})

	// 1. wrenn up prints the URL, the admin key and a copy-paste example.
	srv, ready := startUp(t, wrenn, upArgs...)
	t.Logf("wrenn up: first start ready (minimal template built) in %v", ready)
	out := srv.output()
	m := keyRE.FindStringSubmatch(out)
	if m == nil {
		srv.stop(t)
		t.Fatalf("no admin key in the output of wrenn up:\n%s", out)
	}
	key := m[1]
	url := "http://" + addr
	for _, want := range []string{
		"Wrenn is up at " + url, "wrenn login --url " + url + " --key " + key, "wrenn capsule create",
		"Capsule ports: http://" + proxyAddr + "/proxy/",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("wrenn up output lacks %q:\n%s", want, out)
		}
	}
	st, err := os.Stat(filepath.Join(home, "admin.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("admin.key: %v, mode %v; want 0600", err, st.Mode())
	}

	// 2. Log in with the printed key.
	c := cli{t: t, wrenn: wrenn, config: filepath.Join(t.TempDir(), "config")}
	if got := c.ok("login", "--url", url, "--key", key); !strings.Contains(got, "Logged in to "+url) {
		t.Errorf("login said %q", got)
	}
	if cs, err := os.Stat(c.config); err != nil || cs.Mode().Perm() != 0o600 {
		t.Errorf("client config: %v, mode %v; want 0600", err, cs.Mode())
	}

	// 3. Create a capsule and run echo hello in it.
	t0 := time.Now()
	id := strings.TrimSpace(c.ok("capsule", "create", "--template", "minimal", "-q"))
	created := time.Since(t0)
	if !strings.HasPrefix(id, "cl-") {
		t.Fatalf("create printed %q; want a capsule id", id)
	}
	t1 := time.Now()
	stdout, stderr, code := c.run("capsule", "exec", id, "--", "echo", "hello")
	t.Logf("CLI create: %v, first exec: %v (each includes a CLI process start)", created, time.Since(t1))
	if stdout != "hello\n" || code != 0 {
		t.Fatalf("exec echo hello: stdout %q, exit %d, stderr %q; want hello, 0", stdout, code, stderr)
	}
	if _, _, code := c.run("capsule", "exec", id, "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec exit 7: wrenn exited %d", code)
	}

	// 4. Copy a file in and out.
	local := filepath.Join(t.TempDir(), "data.bin")
	data := make([]byte, 3<<20)
	_, _ = rand.Read(data)
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c.ok("capsule", "cp", local, id+":/tmp/data.bin")
	back := filepath.Join(t.TempDir(), "back.bin")
	c.ok("capsule", "cp", id+":/tmp/data.bin", back)
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
		t.Errorf("file copied out differs from the one copied in (%d bytes, %v)", len(got), err)
	}

	// 5. Pause, resume, exec again.
	c.ok("capsule", "pause", id)
	if s := c.status(id); s != "paused" {
		t.Errorf("status after pause = %s", s)
	}
	c.ok("capsule", "resume", id)
	sum := fmt.Sprintf("%x", sha256.Sum256(data))
	if stdout := c.ok("capsule", "exec", id, "--", "sha256sum", "/tmp/data.bin"); !strings.HasPrefix(stdout, sum+" ") {
		t.Errorf("after resume sha256sum says %q; want %s", stdout, sum)
	}

	// 6. Remove it.
	c.ok("capsule", "rm", id)
	if _, errOut, code := c.run("capsule", "get", id); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("get after rm: exit %d, %q; want not found", code, errOut)
	}

	// 7. A capsule left running is paused on stop and re-adopted by the
	// next start, which keeps the key and prints no new one.
	kept := strings.TrimSpace(c.ok("capsule", "create", "-t", "minimal", "-q"))
	c.ok("capsule", "exec", kept, "--", "sh", "-c", "echo persisted > /root/mark")
	srv.stop(t)
	if !strings.Contains(srv.output(), "1 capsule(s) paused") {
		t.Errorf("stop output lacks the pause report:\n%s", srv.output())
	}
	if _, _, code := c.run("capsule", "ls"); code == 0 {
		t.Error("capsule ls succeeded with wrenn up stopped")
	}
	_, errOut, _ := c.run("capsule", "ls")
	if want := "no Wrenn at " + url + ": is `wrenn up` running?"; !strings.Contains(errOut, want) {
		t.Errorf("with wrenn up stopped, ls says %q; want %q", errOut, want)
	}

	srv2, ready2 := startUp(t, wrenn, upArgs...)
	t.Logf("wrenn up: restart ready in %v", ready2)
	if out2 := srv2.output(); strings.Contains(out2, "wrn_") {
		t.Errorf("the restart printed a key:\n%s", out2)
	}
	if b, err := os.ReadFile(filepath.Join(home, "admin.key")); err != nil || strings.TrimSpace(string(b)) != key {
		t.Errorf("admin.key changed on restart (%v)", err)
	}
	c.ok("capsule", "ls") // the old login still works
	if s := c.status(kept); s != "paused" {
		t.Errorf("re-adopted capsule status = %s; want paused", s)
	}
	c.ok("capsule", "resume", kept)
	if got := c.ok("capsule", "exec", kept, "--", "cat", "/root/mark"); got != "persisted\n" {
		t.Errorf("re-adopted capsule's file = %q", got)
	}
	c.ok("capsule", "rm", kept)
	srv2.stop(t)
}

// TestQuickStartBaseTemplate is the quick start without --template: the
// default "base" template (Debian, debootstrap, cached machine-wide) is
// built in the background and then serves `wrenn capsule create`. The
// first build on a machine downloads Debian packages and takes minutes,
// so -short skips it.
func TestQuickStartBaseTemplate(t *testing.T) {
	testutil.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds the Debian base template (minutes on a fresh machine); skipped with -short")
	}
	bin := buildBins(t)
	wrenn := filepath.Join(bin, "wrenn")
	home := t.TempDir()
	addr := freeAddr(t)
	args := []string{
		"--home", home, "--listen", addr, "--proxy-listen", freeAddr(t), "--on-exit", "destroy",
		"--instance", fmt.Sprintf("wqb%d", os.Getpid()%100000), "--subnet", "10.253.0.0/16", // tests of this package run one at a time
		"--warm-pool", "off", "--cold-spares", "0",
	}
	srv, _ := startUp(t, wrenn, args...)
	defer srv.stop(t)
	start := time.Now()
	deadline := time.After(30 * time.Minute)
	for !strings.Contains(srv.output(), "Building template base (Debian bookworm, debootstrap): done") {
		select {
		case <-deadline:
			t.Fatalf("base template not built within 30 minutes:\n%s", srv.output())
		case err := <-srv.exited:
			srv.exited <- err
			t.Fatalf("wrenn up exited: %v\n%s", err, srv.output())
		case <-time.After(time.Second):
		}
		if strings.Contains(srv.output(), "Could not build the base template") {
			t.Fatalf("base build failed:\n%s", srv.output())
		}
	}
	t.Logf("base template ready %v after wrenn up was", time.Since(start))
	key := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(home, "admin.key")))))
	c := cli{t: t, wrenn: wrenn, config: filepath.Join(t.TempDir(), "config")}
	c.ok("login", "--url", "http://"+addr, "--key", key)
	id := strings.TrimSpace(c.ok("capsule", "create", "-q"))
	if got := c.ok("capsule", "exec", id, "--", "python3", "-c", "print(6*7)"); got != "42\n" {
		t.Errorf("python3 in base printed %q", got)
	}
	if got := c.ok("capsule", "exec", id, "--", "bash", "-c", "cat /etc/debian_version"); !strings.HasPrefix(got, "12.") {
		t.Errorf("base is not Debian 12: %q", got)
	}
	c.ok("capsule", "rm", id)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
