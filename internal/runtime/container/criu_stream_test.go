package container_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// memhogSum has memhog hash all its memory (SIGUSR2) and returns the
// SHA-256 it wrote.
func memhogSum(ctx context.Context, t testing.TB, d *container.Driver, id string) string {
	t.Helper()
	before := execIn(ctx, t, d, id, "cat /tmp/memhog.sum 2>/dev/null | wc -l")
	execIn(ctx, t, d, id, "kill -USR2 $(cat /tmp/memhog.pid)")
	var sum string
	testutil.Eventually(t, time.Minute, func() bool {
		out, err := runcExec(ctx, d, id, "sh", "-c", "cat /tmp/memhog.sum")
		if err != nil {
			return false
		}
		lines := strings.Fields(out)
		if strings.TrimSpace(before) == "" || len(lines) <= atoi(t, before) {
			return false
		}
		sum = lines[len(lines)-1]
		return true
	}, "memhog hashed its memory")
	return sum
}

func atoi(t testing.TB, s string) int {
	t.Helper()
	var n int
	for _, c := range strings.TrimSpace(s) {
		if c < '0' || c > '9' {
			t.Fatalf("not a number: %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// TestCRIUMemoryIdenticalAfterResume (issue 21, item 3): every byte of a
// process's memory comes back after pause to disk and resume — memhog
// hashes its 96 MiB before the pause and after the resume — with the pages
// dumped to files (the default) and streamed into the store over CRIU's
// page-server protocol, for a full image and for a re-pause stored as a
// diff after 1 % of the memory was rewritten.
func TestCRIUMemoryIdenticalAfterResume(t *testing.T) {
	d := memTemplateDriver(t, 7)
	for _, mode := range []struct{ name, ps string }{{"files", "off"}, {"page-server", "on"}} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := testutil.Context(t, 5*time.Minute)
			d.SetCRIUPageServer(mode.ps)
			id := "cl-criu-sum-" + mode.name
			startCapsule(t, d, runtime.Spec{ID: id, MemoryMB: 512})
			startMemhog(ctx, t, d, id, 96)
			resume := func(what string) {
				t.Helper()
				snap, err := d.Snapshot(ctx, id)
				if err != nil || !snap.MemoryKept {
					t.Fatalf("%s: Snapshot: %+v, %v", what, snap, err)
				}
				info, err := d.Restore(ctx, snap)
				if err != nil || !info.MemoryKept {
					t.Fatalf("%s: Restore: %+v, %v", what, info, err)
				}
				if err := d.WaitReady(ctx, info); err != nil {
					t.Fatal(err)
				}
			}
			sum0 := memhogSum(ctx, t, d, id)
			resume("full image")
			if got := memhogSum(ctx, t, d, id); got != sum0 {
				t.Fatalf("memory after resume hashes to %s, before the pause %s", got, sum0)
			}
			touchMemhog(ctx, t, d, id, 1)
			sum1 := memhogSum(ctx, t, d, id)
			if sum1 == sum0 {
				t.Fatal("rewriting 1 % of the memory did not change its hash")
			}
			resume("re-pause (diff)")
			if got := memhogSum(ctx, t, d, id); got != sum1 {
				t.Fatalf("memory after the diff resume hashes to %s, before the pause %s", got, sum1)
			}
			if err := d.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		})
	}
	d.SetCRIUPageServer("")
	assertClean(t, d)
}

// TestCRIUPauseInterrupted (issue 21, item 3): a pause to disk cut off
// while CRIU dumps 512 MiB (its context ends: criu and runc are killed, a
// page-server session is cut mid-stream) publishes no memory image and
// leaves nothing in the scratch directory or the snapshot engine's
// temporary directory, with the pages dumped to files and streamed. (A
// crash of the agent instead leaves files there that the next start
// removes: both directories are emptied when a driver opens.)
func TestCRIUPauseInterrupted(t *testing.T) {
	d := memTemplateDriver(t, 7)
	for _, mode := range []struct{ name, ps string }{{"files", "off"}, {"page-server", "on"}} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := testutil.Context(t, 5*time.Minute)
			d.SetCRIUPageServer(mode.ps)
			id := "cl-criu-cut-" + mode.name
			startCapsule(t, d, runtime.Spec{ID: id, MemoryMB: 1024})
			startMemhog(ctx, t, d, id, 512)
			cctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
			snap, err := d.Snapshot(cctx, id)
			cancel()
			t.Logf("interrupted Snapshot: memory kept %v, err %v", snap.MemoryKept, err)
			if snap.MemoryKept {
				t.Fatal("the memory image was published although the pause was cut off")
			}
			names, lerr := d.SnapshotManager().Store.ListHeaders(ctx)
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, n := range names {
				if strings.HasPrefix(n, id) && strings.HasSuffix(n, ".criu") {
					t.Errorf("memory image %s in the store after an interrupted pause", n)
				}
			}
			for _, dir := range []string{d.CRIUScratchDir(), d.SnapshotManager().TempDir} {
				ents, err := os.ReadDir(dir)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ents {
					t.Errorf("%s left in %s after an interrupted pause", e.Name(), dir)
				}
			}
			if err := d.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		})
	}
	d.SetCRIUPageServer("")
	assertClean(t, d)
}
