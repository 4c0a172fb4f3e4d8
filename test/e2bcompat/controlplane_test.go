package e2bcompat

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
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

// wrennUp builds wrenn and envd, starts `wrenn up` (own home, instance
// and subnet; --no-base unless base) and returns its URL, the admin key
// and its home; cleanup stops it with --on-exit destroy.
func wrennUp(ctx context.Context, tb testing.TB, base bool, subnet string) (url, key, home string) {
	tb.Helper()
	testutil.RequireRoot(tb)
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("%s is required for the E2B compatibility test (Debian: apt-get install nodejs npm): %v", tool, err)
		}
	}
	bin := tb.TempDir()
	for _, b := range []struct{ out, pkg string }{{"wrenn", "../../cmd/wrenn"}, {"envd", "../../cmd/envd"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join("node_modules", "e2b")); err != nil {
		install := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		if out, err := install.CombinedOutput(); err != nil {
			tb.Fatalf("npm ci: %v\n%s", err, out)
		}
	}

	home = tb.TempDir()
	addr, proxyAddr := freeAddr(tb), freeAddr(tb)
	instance := fmt.Sprintf("we2b%d", os.Getpid()%10000)
	args := []string{"up", "--home", home, "--listen", addr, "--proxy-listen", proxyAddr, "--instance", instance, "--subnet", subnet, "--on-exit", "destroy", "--warm-pool", "off", "--cold-spares", "0"}
	if !base {
		args = append(args, "--no-base")
	}
	up := exec.Command(filepath.Join(bin, "wrenn"), args...)
	pr, pw := io.Pipe()
	up.Stdout, up.Stderr = pw, pw
	if err := up.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait(); _ = pw.Close() }()
	var (
		mu  sync.Mutex
		log strings.Builder
	)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		key := ""
		for sc.Scan() {
			l := sc.Text()
			mu.Lock()
			log.WriteString(l + "\n")
			mu.Unlock()
			if m := keyRE.FindStringSubmatch(l); m != nil {
				key = m[1]
			}
			if strings.HasPrefix(l, "Stop with Ctrl-C") {
				select {
				case ready <- key:
				default:
				}
			}
		}
	}()
	output := func() string { mu.Lock(); defer mu.Unlock(); return log.String() }
	tb.Cleanup(func() {
		_ = up.Process.Signal(syscall.SIGINT)
		select {
		case err := <-exited:
			if err != nil {
				tb.Errorf("wrenn up exited with %v:\n%s", err, output())
			}
		case <-time.After(3 * time.Minute):
			_ = up.Process.Kill()
			tb.Errorf("wrenn up did not stop:\n%s", output())
		}
	})
	select {
	case key = <-ready:
	case err := <-exited:
		exited <- err
		tb.Fatalf("wrenn up exited: %v\n%s", err, output())
	case <-time.After(testutil.Long):
		tb.Fatalf("wrenn up not ready:\n%s", output())
	}
	if key == "" {
		tb.Fatalf("no admin key in wrenn up's output:\n%s", output())
	}
	return "http://" + addr, key, home
}

// TestE2BSDKThroughControlPlane drives the unmodified E2B SDK against a
// real `wrenn up` (control plane + agent + capsules) through <url>/e2b
// and <url>/e2b/envd.
func TestE2BSDKThroughControlPlane(t *testing.T) {
	ctx := testutil.Context(t, 10*time.Minute)
	url, key, _ := wrennUp(ctx, t, false, "10.166.0.0/16")
	script := func() ([]byte, error) {
		run := exec.CommandContext(ctx, "node", "sdk.mjs")
		run.Env = append(os.Environ(), "E2B_API_URL="+url+"/e2b", "E2B_SANDBOX_URL="+url+"/e2b/envd", "E2B_API_KEY="+key,
			"WRENN_URL="+url, "WRENN_KEY="+key)
		var stderr strings.Builder
		run.Stderr = &stderr
		out, err := run.Output()
		if err != nil {
			return out, fmt.Errorf("%w\n%s", err, stderr.String())
		}
		return out, nil
	}
	out, err := script()
	if err != nil {
		t.Fatalf("E2B SDK script failed: %v\n%s", err, out)
	}
	// Many streams side by side through /e2b/envd all arrive whole
	// (the once intermittent "terminated", issue 14; see internal/relay).
	checkManyStreams(ctx, t, url, key, 200, 8)
	var got struct {
		ID   string
		Echo struct {
			ExitCode       int
			Stdout, Stderr string
		}
		Exit              any
		Streamed          []string
		BgExit            int
		Stdin             string
		Read, Renamed     string
		List              []string
		Watched           bool
		ExistsAfterRemove bool
		BigOK             bool
		SignedRead        string
		ForgedStatus      int
		Pty               bool
		Info              struct {
			State      string
			Metadata   map[string]string
			TemplateID string
		}
		ListByMetadata  []string
		ListBySuite     int
		TimeoutExtended bool
		PausedState     string
		RebootConnect   string
		StillPaused     string
		AfterResume     string
		ResumedState    string
		UnknownID       string
		BadKey          string
		NoToken         struct {
			Status int
			Body   struct {
				Code    int
				Message string
			}
		}
		WrongToken, CrossToken, NoID int
		Fork                         struct {
			Status int
			Body   []struct {
				Sandbox *struct {
					SandboxID string
				}
			}
		}
		Malformed int
		OtherTeam struct {
			Get, Connect string
			Kill         bool
			Listed       int
		}
		Killed, KilledAgain bool
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("script output: %v\n%s", err, out)
	}
	t.Logf("SDK results: %s", out)
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: unexpected result", name)
		}
	}
	check("echo with env", got.Echo.ExitCode == 0 && got.Echo.Stdout == "hi\n" && got.Echo.Stderr == "err\n")
	check("exit code 7", got.Exit == float64(7))
	check("background streamed output", slices.Equal(got.Streamed, []string{"line1", "line2", "line3"}) && got.BgExit == 0)
	check("stdin", got.Stdin == "from stdin\n")
	check("write+read", got.Read == "content A")
	check("list", slices.Contains(got.List, "a.txt"))
	check("rename", got.Renamed == "content A")
	check("watch", got.Watched)
	check("remove", !got.ExistsAfterRemove)
	check("32 MiB upload+download", got.BigOK)
	check("signed download URL", got.SignedRead == "content A")
	check("forged signature refused", got.ForgedStatus == 401)
	check("pty", got.Pty)
	check("info", got.Info.State == "running" && got.Info.Metadata["role"] == "main")
	check("list by metadata", slices.Equal(got.ListByMetadata, []string{got.ID}) && got.ListBySuite == 2)
	check("set timeout", got.TimeoutExtended)
	check("pause", got.PausedState == "paused")
	check("connect with memory false is 501", got.RebootConnect == "SandboxError:501" && got.StillPaused == "paused")
	check("connect resumes, file survives", got.AfterResume == "content A" && got.ResumedState == "running")
	check("unknown id", strings.Contains(got.UnknownID, "NotFound"))
	check("bad key", strings.HasPrefix(got.BadKey, "AuthenticationError"))
	check("no access token", got.NoToken.Status == 401 && got.NoToken.Body.Code == 401)
	check("wrong access token", got.WrongToken == 401)
	check("another sandbox's token", got.CrossToken == 401)
	check("no sandbox id", got.NoID == 400)
	check("fork makes one copy (201, one sandbox)", got.Fork.Status == 201 && len(got.Fork.Body) == 1 && got.Fork.Body[0].Sandbox != nil && got.Fork.Body[0].Sandbox.SandboxID != "")
	check("malformed body", got.Malformed == 400)
	check("another team's sandbox", strings.Contains(got.OtherTeam.Get, "NotFound") && strings.Contains(got.OtherTeam.Connect, "NotFound") &&
		!got.OtherTeam.Kill && got.OtherTeam.Listed == 0)
	check("kill", got.Killed && !got.KilledAgain)
}
