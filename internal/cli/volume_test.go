package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up/uptest"
)

// TestVolumeCommandsAgainstRealWrenn: wrenn volume create/list/get/put/
// cat/ls/rm/delete and capsule create --volume against a real Wrenn.
func TestVolumeCommandsAgainstRealWrenn(t *testing.T) {
	testutil.RequireRoot(t)
	isolate(t)
	ctx := testutil.Context(t, 5*time.Minute)
	in, err := uptest.Start(ctx, uptest.Options{
		Dir: t.TempDir(), Instance: fmt.Sprintf("wclv%d", os.Getpid()%100000), Subnet: "10.2.128.0/19", Log: os.Stderr,
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
	run := func(want int, args ...string) string {
		t.Helper()
		out, errOut, code := runCLI(t, nil, args...)
		if code != want {
			t.Fatalf("wrenn %s: exit %d, want %d: %s %s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out + errOut
	}
	run(0, "volume", "create", "cli-vol", "--size", "32")
	if out := run(1, "volume", "create", "bad/name"); !strings.Contains(out, "invalid") {
		t.Fatalf("bad name: %s", out)
	}
	id := strings.TrimSpace(run(0, "capsule", "create", "-t", "minimal", "-q", "--volume", "cli-vol:/v"))
	run(0, "capsule", "exec", id, "--", "sh", "-c", "echo from capsule > /v/a.txt")
	if out := run(0, "volume", "get", "cli-vol"); !strings.Contains(out, id+":/v:rw") {
		t.Fatalf("get while mounted: %s", out)
	}
	if out := run(1, "volume", "delete", "cli-vol"); !strings.Contains(out, "mounted") {
		t.Fatalf("delete while mounted: %s", out)
	}
	run(1, "capsule", "create", "-t", "minimal", "-q", "--volume", "cli-vol:/proc")
	run(1, "capsule", "create", "-t", "minimal", "-q", "--volume", "cli-vol")
	run(0, "capsule", "rm", id)
	local := filepath.Join(t.TempDir(), "b.txt")
	if err := os.WriteFile(local, []byte("from disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(0, "volume", "put", "cli-vol", local, "/dir/b.txt")
	if out := run(0, "volume", "cat", "cli-vol", "/a.txt"); out != "from capsule\n" {
		t.Fatalf("cat: %q", out)
	}
	if out := run(0, "volume", "ls", "cli-vol"); !strings.Contains(out, "a.txt") || !strings.Contains(out, "dir") {
		t.Fatalf("ls: %s", out)
	}
	run(0, "volume", "rm", "cli-vol", "/dir")
	if out := run(0, "volume", "list"); !strings.Contains(out, "cli-vol") || !strings.Contains(out, "store") {
		t.Fatalf("list: %s", out)
	}
	run(0, "volume", "delete", "cli-vol")
	run(1, "volume", "get", "cli-vol")
}
