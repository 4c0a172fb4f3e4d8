// Package dashboard tests the web dashboard in a real browser: it builds
// wrenn (with the dashboard embedded), starts `wrenn up` in a fresh home and
// runs web/e2e/dashboard.mjs, which drives Debian's chromium with
// playwright-core against it. Screenshots land in $WRENN_DASHBOARD_SHOTS
// (default: the test's temp dir).
package dashboard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/web"
)

var keyRE = regexp.MustCompile(`Admin API key: (wrn_[a-z0-9]+)`)

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// requirements fail loudly: the browser test never skips.
func requirements(t testing.TB) (node, chromium, webDir string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is missing: install Node.js (scripts/deps.sh)")
	}
	chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is missing: run scripts/deps.sh (Debian's chromium package)", chromium)
	}
	webDir, err = filepath.Abs("../../web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core")); err != nil {
		t.Fatalf("web/node_modules is missing: run `make web` (npm ci in web/)")
	}
	if !web.Built() {
		t.Fatal("the dashboard is not built into internal/web/dist: run `make web` first")
	}
	return node, chromium, webDir
}

// wrennUp is a running `wrenn up` for a browser run.
type wrennUp struct {
	url, key, proxy, log string
}

func TestDashboardInBrowser(t *testing.T) {
	testutil.RequireRoot(t)
	node, chromium, webDir := requirements(t)
	w := startUp(t, "10.164.0.0/16")

	shots := os.Getenv("WRENN_DASHBOARD_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, node, "e2e/dashboard.mjs")
	run.Dir = webDir
	run.Env = append(os.Environ(), "WRENN_URL="+w.url, "WRENN_KEY="+w.key, "SHOTS="+shots, "CHROMIUM="+chromium,
		"WRENN_UP_LOG="+w.log, "WRENN_PROXY="+w.proxy, "GITHUB_NAME="+ghName)
	res, err := run.CombinedOutput()
	t.Logf("browser test output:\n%s", res)
	if err != nil {
		t.Fatalf("browser test failed: %v (screenshots in %s)", err, shots)
	}
}

// startUp builds wrenn and envd, starts `wrenn up` on subnet (with a fake
// GitHub and the log at info level) and stops it when the test ends.
func startUp(t testing.TB, subnet string) wrennUp {
	t.Helper()

	bin := t.TempDir()
	for _, b := range []struct{ out, pkg string }{{"wrenn", "./cmd/wrenn"}, {"envd", "./cmd/envd"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", b.pkg, err, out)
		}
	}

	home := t.TempDir()
	addr, proxyAddr := freeAddr(t), freeAddr(t)
	instance := fmt.Sprintf("wd%d%s", os.Getpid()%10000, strings.Split(subnet, ".")[1]) // one per subnet
	gh := fakeGitHub(t)
	secret := filepath.Join(t.TempDir(), "github-secret")
	if err := os.WriteFile(secret, []byte(ghSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	// --log-level info: the log mailer's verification and reset links are
	// read from the log by the browser test (WRENN_UP_LOG).
	cmd := exec.Command(filepath.Join(bin, "wrenn"), "up", "--home", home, "--listen", addr, "--proxy-listen", proxyAddr,
		"--no-base", "--instance", instance, "--subnet", subnet, "--on-exit", "destroy", "--log-level", "info", "--warm-pool", "off", "--cold-spares", "0",
		"--github-client-id", ghClientID, "--github-client-secret-file", secret,
		"--github-authorize-url", gh.URL+"/authorize", "--github-token-url", gh.URL+"/token", "--github-api-url", gh.URL+"/api")
	upLog, err := os.Create(filepath.Join(t.TempDir(), "up.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = upLog.Close() })
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); _ = pw.Close() }()
	var out strings.Builder
	lines := make(chan string, 4096)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			_, _ = upLog.WriteString(sc.Text() + "\n")
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("wrenn up exited with %v", err)
			}
		case <-time.After(3 * time.Minute):
			_ = cmd.Process.Kill()
			t.Error("wrenn up did not stop within 3 minutes")
		}
	}
	t.Cleanup(stop)

	var key, dashboard string
	deadline := time.After(testutil.Long)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("wrenn up ended before it was ready:\n%s", out.String())
			}
			out.WriteString(l + "\n")
			if m := keyRE.FindStringSubmatch(l); m != nil {
				key = m[1]
			}
			if s, ok := strings.CutPrefix(strings.TrimSpace(l), "Dashboard: "); ok {
				dashboard = strings.TrimSuffix(s, "/")
			}
			if strings.HasPrefix(l, "Stop with Ctrl-C") {
				break wait
			}
		case <-deadline:
			t.Fatalf("wrenn up not ready within %v:\n%s", testutil.Long, out.String())
		}
	}
	go func() {
		for range lines { //nolint:revive // drain
		}
	}()
	if key == "" || dashboard != "http://"+addr {
		t.Fatalf("banner lacks the key or the dashboard URL (want http://%s):\n%s", addr, out.String())
	}
	return wrennUp{url: dashboard, key: key, proxy: "http://" + proxyAddr, log: upLog.Name()}
}
