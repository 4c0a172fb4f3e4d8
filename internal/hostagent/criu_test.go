package hostagent_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestPauseToDiskKeepsMemory: with a working CRIU (WRENN_TEST_CRIU, e.g.
// $(scripts/criu.sh)), pausing to disk through the agent reports
// memory_kept, and after resume a background process started through the
// API is the same process (same pid) still counting from where it was: its
// counter lives only in the shell's memory.
func TestPauseToDiskKeepsMemory(t *testing.T) {
	criu := os.Getenv("WRENN_TEST_CRIU")
	if criu == "" {
		t.Skip("memory snapshots: set WRENN_TEST_CRIU to a working criu (WRENN_TEST_CRIU=$(scripts/criu.sh)); make test does")
	}
	d := newDirs(t)
	d.tweakDriver = func(dc *container.Config) {
		dc.CRIUPath = criu
		dc.CRIUEnv = strings.Fields(os.Getenv("WRENN_TEST_CRIU_ENV"))
	}
	h := startHost(t, d, nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	sp, err := c.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{
		CapsuleId: id, Cmd: "/bin/sh", Tag: "counter",
		Args: []string{"-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"},
	}))
	if err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
	count := func() int {
		// 0 until the counter's first write (under load the first exec can
		// come before the shell's first iteration).
		n, _ := strconv.Atoi(strings.TrimSpace(execOK(t, c, id, "/bin/sh", "-c", "cat /tmp/count 2>/dev/null || echo 0")))
		return n
	}
	// 20 ticks a second: a counter restarted by a reboot would need two
	// seconds to get back to 40.
	testutil.Eventually(t, 20*time.Second, func() bool { return count() >= 40 }, "counter never reached 40")
	before := count()

	pr, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
	if err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	if !pr.Msg.GetMemoryKept() {
		t.Fatalf("pause to disk with a working criu: memory_kept = false")
	}
	if _, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("resume: %v", err)
	}
	got, err := c.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
	if err != nil || !got.Msg.GetCapsule().GetMemoryKept() {
		t.Fatalf("after resume: memory_kept false (%v)", err)
	}
	// The same process carries on: its count continues from the value at
	// pause instead of restarting at 1.
	if first := count(); first < before {
		t.Fatalf("count right after resume = %d, before pause it was %d: the counter restarted", first, before)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return count() > before+5 }, "counter did not continue after resume")
	ls, err := c.ListProcesses(ctx, connect.NewRequest(&pb.ListProcessesRequest{CapsuleId: id}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range ls.Msg.GetProcesses() {
		found = found || (p.GetTag() == "counter" && p.GetPid() == sp.Msg.GetPid())
	}
	if !found {
		t.Errorf("process %d (tag counter) not listed after resume: %v", sp.Msg.GetPid(), ls.Msg.GetProcesses())
	}
}
