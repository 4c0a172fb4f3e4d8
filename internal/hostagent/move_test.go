package hostagent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// moveDirs is a host whose container driver keeps snapshots in the store
// at shared (the same directory for every host: a store all hosts share),
// on its own subnet: the upper halves of 10.3/16 and 10.4/16 (the move
// tests' ranges; the fleet's move tests use the lower halves).
func moveDirs(t *testing.T, shared string, net int) dirs {
	t.Helper()
	d := newDirs(t)
	d.subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.128.0/17", net))
	criu := os.Getenv("WRENN_TEST_CRIU")
	tmp := filepath.Join(d.driverState, "shared-snapshot-tmp")
	d.tweakDriver = func(dc *container.Config) {
		st, err := store.OpenLocal(shared)
		if err != nil {
			t.Fatalf("shared store: %v", err)
		}
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		dc.Snapshots = &snapshot.Manager{Store: st, TempDir: tmp, Log: logger()}
		if criu != "" {
			dc.CRIUPath = criu
			dc.CRIUEnv = strings.Fields(os.Getenv("WRENN_TEST_CRIU_ENV"))
		}
	}
	return d
}

func movable(ac *hostagent.Config) {
	ac.SharedSnapshotIsolations = []string{runtime.IsolationContainer}
}

// TestMoveBetweenHosts: a capsule paused to disk on host A (a store both
// hosts share) is adopted and resumed by host B while A is down: same id,
// same envd access token, its files, and (with CRIU) its processes with
// their memory. A coming back still lists it hibernated; ReleaseCapsule
// makes A forget it without touching the snapshot B resumed from, and B
// pauses and resumes it again afterwards.
func TestMoveBetweenHosts(t *testing.T) {
	shared := t.TempDir()
	dA, dB := moveDirs(t, shared, 3), moveDirs(t, shared, 4)
	a := startHost(t, dA, movable)
	b := startHost(t, dB, movable)
	ctx := testutil.Context(t, testutil.Long)
	withCRIU := os.Getenv("WRENN_TEST_CRIU") != ""

	id := create(t, a.client, &pb.CreateCapsuleRequest{TimeoutSec: 600, Env: map[string]string{"MOVED_ENV": "kept"}}).GetCapsuleId()
	token := getCapsule(t, a.client, id).GetEnvdAccessToken()
	execOK(t, a.client, id, "/bin/sh", "-c", "echo moved-file > /root/moved.txt")
	if _, err := a.client.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{
		CapsuleId: id, Cmd: "/bin/sh", Tag: "counter",
		Args: []string{"-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"},
	})); err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
	count := func(h *host) int {
		n, _ := strconv.Atoi(strings.TrimSpace(execOK(t, h.client, id, "/bin/sh", "-c", "cat /tmp/count 2>/dev/null || echo 0")))
		return n
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return count(a) >= 40 }, "counter never reached 40")

	// A running capsule is not released, and an adopt needs an export.
	if _, err := a.client.ReleaseCapsule(ctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("release of a running capsule: %v, want FailedPrecondition", err)
	}
	if _, err := b.client.AdoptCapsule(ctx, connect.NewRequest(&pb.AdoptCapsuleRequest{Export: []byte(`{"version":1}`)})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("adopt of a bad export: %v, want InvalidArgument", err)
	}

	pr, err := a.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
	if err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	export := pr.Msg.GetExport()
	if len(export) == 0 {
		t.Fatalf("pause to disk with a shared store: no export (%q)", pr.Msg.GetExportUnavailable())
	}
	before := count0(t, shared) // the store holds the snapshot
	if before == 0 {
		t.Fatal("no snapshot in the shared store after a pause to disk")
	}
	a.stop() // host A goes away

	// An adopt cut short on B (its driver recorded the capsule, its agent
	// died before it did): B's restart releases the record and keeps the
	// snapshot, which still belongs to A.
	var ex struct {
		Record struct {
			Snapshot runtime.SnapshotInfo `json:"snapshot"`
		} `json:"record"`
	}
	if err := json.Unmarshal(export, &ex); err != nil {
		t.Fatal(err)
	}
	b.stop()
	drv, err := container.New(ctx, driverConfig(dB))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drv.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := drv.Adopt(ctx, ex.Record.Snapshot); err != nil {
		t.Fatalf("driver Adopt: %v", err)
	}
	_ = drv.Close()
	b = startHost(t, dB, movable)
	if _, err := b.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("B after a cut-short adopt: %v, want NotFound", err)
	}
	if n := count0(t, shared); n < before {
		t.Fatalf("B's restart deleted the snapshot of a cut-short adopt: %d objects before, %d after", before, n)
	}

	t0 := time.Now()
	ad, err := b.client.AdoptCapsule(ctx, connect.NewRequest(&pb.AdoptCapsuleRequest{Export: export, Resume: true}))
	if err != nil {
		t.Fatalf("AdoptCapsule on B: %v", err)
	}
	t.Logf("moved (adopt + resume on B) in %v, memory kept %v", time.Since(t0), ad.Msg.GetCapsule().GetMemoryKept())
	got := ad.Msg.GetCapsule()
	if got.GetCapsuleId() != id || got.GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING || got.GetEnvdAccessToken() != token {
		t.Fatalf("adopted capsule: id %s state %s token kept %v", got.GetCapsuleId(), got.GetState(), got.GetEnvdAccessToken() == token)
	}
	if s := strings.TrimSpace(execOK(t, b.client, id, "/bin/cat", "/root/moved.txt")); s != "moved-file" {
		t.Fatalf("file after the move = %q", s)
	}
	if s := strings.TrimSpace(execOK(t, b.client, id, "/bin/sh", "-c", "echo $MOVED_ENV")); s != "kept" {
		t.Fatalf("env after the move = %q", s)
	}
	if withCRIU {
		if !got.GetMemoryKept() {
			t.Fatal("with CRIU the moved capsule lost its memory")
		}
		n := count(b)
		testutil.Eventually(t, 10*time.Second, func() bool { return count(b) > n+5 }, "counter did not continue on B")
		if n < 40 {
			t.Fatalf("counter on B restarted at %d", n)
		}
	}

	// A comes back: it still has its hibernated copy until told to let go.
	a2 := startHost(t, dA, movable)
	if st := getCapsule(t, a2.client, id).GetState(); st != pb.CapsuleState_CAPSULE_STATE_HIBERNATED {
		t.Fatalf("A after restart: capsule %s, want hibernated", st)
	}
	if _, err := a2.client.ReleaseCapsule(ctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("ReleaseCapsule on A: %v", err)
	}
	if _, err := a2.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("A after release: %v, want NotFound", err)
	}
	if n := count0(t, shared); n < before {
		t.Fatalf("release deleted snapshot objects: %d before, %d after", before, n)
	}
	// B still owns a working capsule: pause to disk (diffing against the
	// moved snapshot) and resume.
	if _, err := b.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true})); err != nil {
		t.Fatalf("pause on B: %v", err)
	}
	if _, err := b.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("resume on B: %v", err)
	}
	if s := strings.TrimSpace(execOK(t, b.client, id, "/bin/cat", "/root/moved.txt")); s != "moved-file" {
		t.Fatalf("file after a second pause on B = %q", s)
	}
	// A released capsule is gone from A.
	if _, err := a2.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("destroy on A after release: %v, want NotFound", err)
	}
}

// TestAdoptNeedsSharedStore: a host without a shared snapshot store
// exports nothing at pause to disk, and refuses an adopt.
func TestAdoptNeedsSharedStore(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, h.client, &pb.CreateCapsuleRequest{}).GetCapsuleId()
	pr, err := h.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
	if err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	if len(pr.Msg.GetExport()) != 0 || !strings.Contains(pr.Msg.GetExportUnavailable(), "local") {
		t.Fatalf("local store: export %d bytes, reason %q", len(pr.Msg.GetExport()), pr.Msg.GetExportUnavailable())
	}
	exp := `{"version":1,"record":{"id":"cl-x","phase":"hibernated","access_token":"t","snapshot":{"ID":"s","CapsuleID":"cl-x","Keys":["s"]}}}`
	if _, err := h.client.AdoptCapsule(ctx, connect.NewRequest(&pb.AdoptCapsuleRequest{Export: []byte(exp)})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("adopt without a shared store: %v, want FailedPrecondition", err)
	}
}

func getCapsule(t *testing.T, c interface {
	GetCapsule(context.Context, *connect.Request[pb.GetCapsuleRequest]) (*connect.Response[pb.GetCapsuleResponse], error)
}, id string,
) *pb.Capsule {
	t.Helper()
	res, err := c.GetCapsule(testutil.Context(t, testutil.Short), connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
	if err != nil {
		t.Fatalf("GetCapsule %s: %v", id, err)
	}
	return res.Msg.GetCapsule()
}

// count0 counts the files under the shared store.
func count0(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// TestDrainEmptiesWarmPools: while its host drains, an agent keeps no warm
// capsules (a drain discards them: they are not capsules yet); undrained,
// it refills its pools.
func TestDrainEmptiesWarmPools(t *testing.T) {
	h := startHost(t, newDirs(t), func(c *hostagent.Config) { c.WarmPools = map[string]int{tmplName: 1} })
	ready := func() int {
		n := 0
		for _, p := range h.driver.WarmPools() {
			n += p.Ready
		}
		return n
	}
	testutil.Eventually(t, 60*time.Second, func() bool { return ready() == 1 }, "warm pool never filled")
	h.agent.SetDraining(true)
	testutil.Eventually(t, 30*time.Second, func() bool { return ready() == 0 }, "a draining host kept its warm capsules")
	h.agent.SetDraining(true) // idempotent
	h.agent.SetDraining(false)
	testutil.Eventually(t, 60*time.Second, func() bool { return ready() == 1 }, "warm pool not refilled after the drain")
}

// TestReleaseRunningCopyKeepsSnapshot: a move whose adopt's answer was
// lost leaves the capsule running on the new host while the store keeps it
// hibernated on the old one. The reconciler releases that copy (running:
// true): the snapshot it was restored from stays, and the old host resumes
// the capsule from it with its files. Without running, a running capsule
// is not released.
func TestReleaseRunningCopyKeepsSnapshot(t *testing.T) {
	shared := t.TempDir()
	dA, dB := moveDirs(t, shared, 3), moveDirs(t, shared, 4)
	dA.subnet, dB.subnet = netip.MustParsePrefix("10.3.0.0/17"), netip.MustParsePrefix("10.4.0.0/17")
	a := startHost(t, dA, movable)
	b := startHost(t, dB, movable)
	ctx := testutil.Context(t, testutil.Long)

	id := create(t, a.client, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	execOK(t, a.client, id, "/bin/sh", "-c", "echo old-host > /root/kept.txt")
	pr, err := a.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
	if err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	before := count0(t, shared)
	if _, err := b.client.AdoptCapsule(ctx, connect.NewRequest(&pb.AdoptCapsuleRequest{Export: pr.Msg.GetExport(), Resume: true})); err != nil {
		t.Fatalf("AdoptCapsule on B: %v", err)
	}
	if _, err := b.client.ReleaseCapsule(ctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("release of a running capsule without running: %v, want FailedPrecondition", err)
	}
	if _, err := b.client.ReleaseCapsule(ctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id, Running: true})); err != nil {
		t.Fatalf("release of the running copy: %v", err)
	}
	if _, err := b.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("B after release: %v, want NotFound", err)
	}
	if n := count0(t, shared); n < before {
		t.Fatalf("releasing the running copy deleted snapshot objects: %d before, %d after", before, n)
	}
	if _, err := a.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("resume on the old host: %v", err)
	}
	if s := strings.TrimSpace(execOK(t, a.client, id, "/bin/cat", "/root/kept.txt")); s != "old-host" {
		t.Fatalf("file on the old host after the release = %q", s)
	}
}
