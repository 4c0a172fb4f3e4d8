// Package e2bcompat checks wire compatibility with E2B's envd protocol the
// way a user would: E2B's own JavaScript SDK (npm package `e2b`, pinned in
// package.json) in debug mode drives a Wrenn envd on localhost:49983.
package e2bcompat

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestE2BJavaScriptSDK(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for the E2B compatibility test (Debian: apt-get install nodejs npm): %v", tool, err)
		}
	}
	ctx := testutil.Context(t, 5*time.Minute)
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}

	// Build envd exactly as shipped: static, no cgo.
	bin := filepath.Join(t.TempDir(), "envd")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "../../cmd/envd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build envd: %v\n%s", err, out)
	}

	if c, err := net.DialTimeout("tcp", "127.0.0.1:49983", time.Second); err == nil {
		_ = c.Close()
		t.Fatal("port 49983 is already in use; the E2B SDK's debug mode needs it")
	}
	envd := exec.Command(bin, "--port", "49983")
	envd.Stdout, envd.Stderr = os.Stderr, os.Stderr
	if err := envd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = envd.Process.Kill(); _ = envd.Wait() })
	testutil.Eventually(t, testutil.Short, func() bool {
		resp, err := http.Get("http://127.0.0.1:49983/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "envd answers /health")

	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b")); err != nil {
		install := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		if out, err := install.CombinedOutput(); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}
	run := exec.CommandContext(ctx, "node", "compat.mjs")
	run.Stderr = os.Stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("E2B SDK script failed: %v\n%s", err, out)
	}
	var got struct {
		Echo struct {
			ExitCode       int
			Stdout, Stderr string
		}
		Exit              struct{ ExitCode int }
		Env, Cwd          string
		Read              string
		List              []string
		Exists            bool
		Renamed           string
		ExistsAfterRemove bool
		BgListed, Killed  bool
		Streamed          []string
		StreamExit        int
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("script output: %v\n%s", err, out)
	}
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: unexpected result; full output:\n%s", name, out)
		}
	}
	check("echo", got.Echo.ExitCode == 0 && got.Echo.Stdout != "" && got.Echo.Stderr == "err\n")
	check("exit code 7", got.Exit.ExitCode == 7)
	check("env", got.Env == "yes")
	check("cwd", got.Cwd == "/tmp")
	check("write+read", got.Read == "content A")
	check("list", slices.Equal(got.List, []string{"a.txt"}))
	check("exists", got.Exists)
	check("rename", got.Renamed == "content A")
	check("remove", !got.ExistsAfterRemove)
	check("background list", got.BgListed)
	check("kill", got.Killed)
	check("streaming", slices.Equal(got.Streamed, []string{"line1", "line2", "line3"}) && got.StreamExit == 0)
}
