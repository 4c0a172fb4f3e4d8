package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up/uptest"
)

// TestCapsuleCommandsAgainstRealWrenn drives the capsule commands against
// a real in-process Wrenn (control plane, agent, container driver).
func TestCapsuleCommandsAgainstRealWrenn(t *testing.T) {
	testutil.RequireRoot(t)
	isolate(t)
	ctx := testutil.Context(t, 5*time.Minute)
	in, err := uptest.Start(ctx, uptest.Options{
		Dir: t.TempDir(), Instance: fmt.Sprintf("wcli%d", os.Getpid()%100000), Subnet: "10.252.0.0/16", Log: os.Stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := in.Stop(); err != nil {
			t.Errorf("stop wrenn: %v", err)
		}
	})
	t.Setenv("WRENN_URL", in.URL)
	t.Setenv("WRENN_API_KEY", in.Key)

	out, errOut, code := runCLI(t, nil, "capsule", "create", "-t", "minimal", "--json", "-e", "A=1,2=3", "--timeout", "10m")
	var created struct {
		ID, Status  string
		TimeoutSec  int64 `json:"timeout_sec"`
		AccessToken string
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || code != 0 || created.Status != "running" || created.TimeoutSec != 600 {
		t.Fatalf("create --json: exit %d, %q (%s): %v", code, out, errOut, err)
	}
	id := created.ID

	t.Run("create --no-internet", func(t *testing.T) {
		out, errOut, code := runCLI(t, nil, "capsule", "create", "-t", "minimal", "-q", "--no-internet")
		nid := strings.TrimSpace(out)
		if code != 0 || !strings.HasPrefix(nid, "cl-") {
			t.Fatalf("create --no-internet: exit %d, %q (%s)", code, out, errOut)
		}
		defer runCLI(t, nil, "capsule", "rm", nid)
		out, _, _ = runCLI(t, nil, "capsule", "get", nid)
		if !strings.Contains(out, "Internet") || !strings.Contains(out, "off") {
			t.Errorf("get of a --no-internet capsule:\n%s", out)
		}
	})

	t.Run("exec --json", func(t *testing.T) {
		out, _, code := runCLI(t, nil, "capsule", "exec", id, "--json", "--", "sh", "-c", "echo $A; echo e >&2; exit 9")
		var res struct {
			ExitCode       int `json:"exit_code"`
			Stdout, Stderr string
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if res.ExitCode != 9 || res.Stdout != "1,2=3\n" || res.Stderr != "e\n" || code != 9 {
			t.Errorf("exec --json = %+v, wrenn exit %d; want exit 9, stdout 1,2=3, stderr e", res, code)
		}
	})

	t.Run("exec streams", func(t *testing.T) {
		out, errOut, code := runCLI(t, nil, "capsule", "exec", id, "--cwd", "/tmp", "--", "sh", "-c", "pwd; echo oops >&2; exit 2")
		if out != "/tmp\n" || !strings.HasPrefix(errOut, "oops\n") || code != 2 {
			t.Errorf("exec: stdout %q, stderr %q, exit %d", out, errOut, code)
		}
	})

	t.Run("exec --stdin", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(w, "one\ntwo\n")
		_ = w.Close()
		defer r.Close()
		out, errOut, code := runCLI(t, r, "capsule", "exec", id, "-i", "--", "wc", "-l")
		if strings.TrimSpace(out) != "2" || code != 0 {
			t.Errorf("exec --stdin: stdout %q, stderr %q, exit %d; want 2", out, errOut, code)
		}
	})

	t.Run("ls and get", func(t *testing.T) {
		out, _, code := runCLI(t, nil, "capsule", "ls")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "minimal") || !strings.Contains(out, "running") {
			t.Errorf("ls = %q", out)
		}
		out, _, code = runCLI(t, nil, "capsule", "get", id)
		if code != 0 || !regexp.MustCompile(`Status +running`).MatchString(out) || !regexp.MustCompile(`Timeout +10m0s`).MatchString(out) {
			t.Errorf("get = %q", out)
		}
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "in.txt")
		if err := os.WriteFile(src, []byte("payload\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := runCLI(t, nil, "capsule", "cp", src, id+":/tmp/"); code != 0 {
			t.Fatalf("cp in: %s", errOut)
		}
		if _, errOut, code := runCLI(t, nil, "capsule", "cp", id+":/tmp/in.txt", dir+"/out.txt"); code != 0 {
			t.Fatalf("cp out: %s", errOut)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(b) != "payload\n" {
			t.Errorf("round trip = %q, %v", b, err)
		}
		out, _, _ := runCLI(t, nil, "capsule", "cp", id+":/tmp/in.txt", "-")
		if out != "payload\n" {
			t.Errorf("cp to stdout = %q", out)
		}
		_, errOut, code := runCLI(t, nil, "capsule", "cp", dir, id+":/tmp/")
		if code == 0 || !strings.Contains(errOut, "is a directory") {
			t.Errorf("cp of a directory: exit %d, %q", code, errOut)
		}
	})

	t.Run("background and logs", func(t *testing.T) {
		out, errOut, code := runCLI(t, nil, "capsule", "exec", id, "-d", "--tag", "job", "--json", "--", "sh", "-c", "sleep 2; echo done; exit 6")
		if code != 0 {
			t.Fatalf("exec -d: %s", errOut)
		}
		var started struct{ PID uint32 }
		if err := json.Unmarshal([]byte(out), &started); err != nil || started.PID == 0 {
			t.Fatalf("exec -d --json = %q: %v", out, err)
		}
		out, _, _ = runCLI(t, nil, "capsule", "logs", id)
		if !strings.Contains(out, fmt.Sprintf("%d", started.PID)) || !strings.Contains(out, "job") {
			t.Errorf("logs (list) = %q", out)
		}
		out, _, code = runCLI(t, nil, "capsule", "logs", id, "job")
		if out != "done\n" || code != 6 {
			t.Errorf("logs job: stdout %q, exit %d; want done, 6", out, code)
		}
	})

	t.Run("shell", func(t *testing.T) { testShell(t, id) })

	t.Run("template import", func(t *testing.T) {
		src := filepath.Join(in.Home, "templates", "minimal", "rootfs")
		out, errOut, code := runCLI(t, nil, "template", "import", "mini2", src, "--home", in.Home)
		if code != 0 || !strings.Contains(out, "Imported template mini2") {
			t.Fatalf("import: exit %d, %q, %q", code, out, errOut)
		}
		out, _, _ = runCLI(t, nil, "template", "ls")
		if !strings.Contains(out, "mini2") {
			t.Errorf("template ls after import = %q", out)
		}
		newID, errOut, code := runCLI(t, nil, "capsule", "create", "-q", "-t", "mini2")
		if code != 0 {
			t.Fatalf("create from the imported template: %s", errOut)
		}
		newID = strings.TrimSpace(newID)
		if out, _, code := runCLI(t, nil, "capsule", "exec", newID, "--", "echo", "imported"); out != "imported\n" || code != 0 {
			t.Errorf("exec in the imported template: %q, exit %d", out, code)
		}
		if _, errOut, code := runCLI(t, nil, "capsule", "rm", newID); code != 0 {
			t.Errorf("rm: %s", errOut)
		}
	})

	t.Run("template build", func(t *testing.T) {
		dir := t.TempDir()
		ctxDir := filepath.Join(dir, "ctx")
		if err := os.MkdirAll(filepath.Join(ctxDir, "www"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctxDir, "www", "hello.txt"), []byte("from the context\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		good := filepath.Join(dir, "Wrennfile")
		if err := os.WriteFile(good, []byte("FROM minimal\nCOPY www /www/\nRUN cat /www/hello.txt\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := runCLI(t, nil, "template", "build", "-f", good, "--context", ctxDir, "cli-built")
		if code != 0 || !strings.Contains(out, "from the context") || !strings.Contains(out, "==> step 2/2: RUN cat /www/hello.txt") || !strings.Contains(out, "Built template cli-built") {
			t.Fatalf("build: exit %d\n%s\n%s", code, out, errOut)
		}
		bad := filepath.Join(dir, "Bad")
		if err := os.WriteFile(bad, []byte("FROM minimal\nRUN echo oops >&2; exit 7\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut, code = runCLI(t, nil, "template", "build", "-f", bad, "cli-bad")
		if code != 1 || !strings.Contains(errOut, "oops") || !strings.Contains(errOut, "exit code 7") {
			t.Fatalf("failing build: exit %d, %q", code, errOut)
		}
		_, errOut, code = runCLI(t, nil, "template", "build", "-f", bad, "Bad Name")
		if code != 1 || !strings.Contains(errOut, "name must be a template name") {
			t.Fatalf("bad name: exit %d, %q", code, errOut)
		}
	})

	t.Run("pause resume rm", func(t *testing.T) {
		out, _, code := runCLI(t, nil, "capsule", "pause", id, "--json")
		if code != 0 || !strings.Contains(out, `"status": "paused"`) {
			t.Errorf("pause --json = %q", out)
		}
		_, errOut, code := runCLI(t, nil, "capsule", "exec", id, "--", "true")
		if code == 0 || !strings.Contains(errOut, "resume it first") {
			t.Errorf("exec on paused: exit %d, %q", code, errOut)
		}
		out, _, code = runCLI(t, nil, "capsule", "resume", id)
		if code != 0 || out != id+" running\n" {
			t.Errorf("resume = %q", out)
		}
		out, _, code = runCLI(t, nil, "capsule", "rm", id, "cl-nothere")
		if code == 0 || !strings.Contains(out, id+" removed") {
			t.Errorf("rm = %q, exit %d; want the capsule removed and a failure for the unknown one", out, code)
		}
	})
}

// testShell runs `wrenn capsule shell` on a real pseudo-terminal: raw
// mode, the initial size, a resize on SIGWINCH, the exit code and the
// restored terminal.
func testShell(t *testing.T, id string) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 50, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	before, err := termMode(tty)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		buf bytes.Buffer
	)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := ptmx.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(buf.String(), s)
	}
	done := make(chan int, 1)
	go func() {
		root := clientRoot()
		root.SetArgs([]string{"capsule", "shell", id, "--cmd", "/bin/sh"})
		root.SetIn(tty)
		root.SetOut(tty)
		root.SetErr(tty)
		code := 0
		if err := root.ExecuteContext(context.Background()); err != nil {
			code = 1
			if ee, ok := err.(interface{ ExitCode() int }); ok {
				code = ee.ExitCode()
			}
		}
		done <- code
	}()
	send := func(s string) {
		if _, err := io.WriteString(ptmx, s); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	send("stty size\r")
	testutil.Eventually(t, testutil.Short, func() bool { return seen("50 132") }, "initial terminal size 50x132")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	send("stty size; echo $((6*7))x\r")
	testutil.Eventually(t, testutil.Short, func() bool { return seen("40 100") && seen("42x") }, "resized to 40x100")
	send("exit 4\r")
	select {
	case code := <-done:
		if code != 4 {
			t.Errorf("shell exit code = %d; want 4", code)
		}
	case <-time.After(testutil.Long):
		t.Fatal("shell did not end")
	}
	testutil.Eventually(t, testutil.Short, func() bool { return seen("[session disconnected]") }, "the disconnect notice")
	after, err := termMode(tty)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("terminal mode after the shell = %+v; want it restored to %+v", after, before)
	}
}

// termMode reads a terminal's local-mode flags.
func termMode(f *os.File) (uint32, error) {
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS) //nolint:gosec // fds fit in int
	if err != nil {
		return 0, err
	}
	return tio.Lflag, nil
}
