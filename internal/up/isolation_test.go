package up_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// TestGVisorCapsuleThroughUp: a `wrenn up` given runsc says at start that
// gvisor works and microvm does not (and why), creates a gVisor capsule
// when asked (stored, shown and run as gvisor: the capsule's
// /proc/version is gVisor's, not the host's), pauses and resumes it on the same isolation, refuses microvm
// with 422 isolation_unavailable naming the reason, and leaves no gVisor
// nftables table behind. One capsule, as the issue asks. The runsc binary
// comes from WRENN_TEST_RUNSC (`make test` builds it with scripts/runsc.sh);
// without it the test fails. Subnets 10.30 and 10.31.
func TestGVisorCapsuleThroughUp(t *testing.T) {
	testutil.RequireRoot(t)
	runsc := os.Getenv("WRENN_TEST_RUNSC")
	if runsc == "" {
		t.Fatal("this test needs runsc: set WRENN_TEST_RUNSC=$(scripts/runsc.sh) (make test does)")
	}
	var out syncBuffer
	cfg := config(t, t.TempDir(), up.OnExitDestroy, &out)
	cfg.Instance = fmt.Sprintf("wiso%d", os.Getpid()%100000)
	cfg.Subnet = netip.MustParsePrefix("10.30.0.0/16")
	cfg.GVisorSubnet = netip.MustParsePrefix("10.31.0.0/16")
	cfg.RunscPath = runsc
	s := start(t, cfg)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			s.shutdown(t)
		}
	})
	banner := out.String()
	for _, want := range []string{"Isolation (default container", "container yes", "gvisor    yes", "microvm   no: the microVM driver is not enabled (--microvm)"} {
		if !strings.Contains(banner, want) {
			t.Errorf("start message lacks %q:\n%s", want, banner)
		}
	}

	ctx := testutil.Context(t, testutil.Long)
	c, err := wrenn.New(s.app.URL(), s.app.AdminKey())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate, Isolation: wrenn.IsolationMicroVM})
	var apiErr *wrenn.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnprocessableEntity || apiErr.Code != wrenn.CodeIsolationUnavailable ||
		!strings.Contains(apiErr.Message, "--microvm") {
		t.Fatalf("microvm create: err = %v, want 422 isolation_unavailable naming --microvm", err)
	}

	cl, err := c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate, Isolation: wrenn.IsolationGVisor})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Delete(ctx, cl.ID) }()
	if cl.Isolation != wrenn.IsolationGVisor {
		t.Fatalf("created capsule isolation = %q", cl.Isolation)
	}
	// gVisor's sentry is the capsule's kernel: its /proc/version is not
	// the host's (a container capsule's is).
	host, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	kernelLog := func(what string) {
		t.Helper()
		res, err := c.Exec(ctx, cl.ID, wrenn.ExecRequest{Cmd: "cat", Args: []string{"/proc/version"}})
		if err != nil {
			t.Fatalf("%s: cat /proc/version: %v", what, err)
		}
		if strings.TrimSpace(res.Stdout) == "" || strings.TrimSpace(res.Stdout) == strings.TrimSpace(string(host)) {
			t.Fatalf("%s: /proc/version %q (exit %v, %s) is the host's %q: not gVisor's kernel", what, res.Stdout, res.ExitCode, res.Stderr, host)
		}
	}
	kernelLog("after create")
	if _, err := c.Pause(ctx, cl.ID, wrenn.PauseOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(ctx, cl.ID, 0); err != nil {
		t.Fatal(err)
	}
	kernelLog("after resume")
	got, err := c.Get(ctx, cl.ID)
	if err != nil || got.Isolation != wrenn.IsolationGVisor || got.Status != wrenn.StatusRunning {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if err := c.Delete(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	s.shutdown(t)
	stopped = true
	table := cfg.Instance + "-gv"
	if o, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput(); err == nil {
		_ = exec.Command("nft", "delete", "table", "ip", table).Run()
		t.Fatalf("nftables table %s left after the stop:\n%s", table, o)
	}
}
