package hostagent_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestPeriodicSnapshotGC: the agent's background sweep deletes build data
// that no header references once it is older than the minimum age, and
// never touches the builds of a hibernated capsule, which still resumes
// with its files.
func TestPeriodicSnapshotGC(t *testing.T) {
	h := startHost(t, newDirs(t), func(c *hostagent.Config) {
		c.SnapshotGCInterval = 50 * time.Millisecond
		c.SnapshotGCMinAge = 300 * time.Millisecond
	})
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	st := h.driver.SnapshotManager().Store

	id := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	if _, err := c.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{CapsuleId: id, Path: "/srv/keep.txt", Content: []byte("kept")})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true})); err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	live := dataNames(t, h)
	if len(live) == 0 {
		t.Fatal("no build data after a pause to disk")
	}

	// An orphan: data uploaded with no header (a publish that crashed
	// before its commit point).
	orphan := "00000000-0000-4000-8000-00000000beef"
	payload := bytes.Repeat([]byte{7}, 8192)
	if err := st.PutData(ctx, orphan, bytes.NewReader(payload), int64(len(payload))); err != nil {
		t.Fatal(err)
	}
	// Younger than the minimum age: the sweep must keep it for now.
	time.Sleep(150 * time.Millisecond)
	if !slices.Contains(dataNames(t, h), orphan) {
		t.Fatal("orphan younger than SnapshotGCMinAge was swept")
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		return !slices.Contains(dataNames(t, h), orphan)
	}, "the orphaned build is never collected")

	got := dataNames(t, h)
	for _, b := range live {
		if !slices.Contains(got, b) {
			t.Errorf("live build %s of the hibernated capsule was swept", b)
		}
	}
	if _, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("resume after gc: %v", err)
	}
	if out := execOK(t, c, id, "/bin/cat", "/srv/keep.txt"); out != "kept" {
		t.Errorf("file after gc and resume: got %q, want %q", out, "kept")
	}
}

func dataNames(t *testing.T, h *host) []string {
	t.Helper()
	objs, err := h.driver.SnapshotManager().Store.ListData(testutil.Context(t, testutil.Short))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(objs))
	for _, o := range objs {
		names = append(names, o.Name)
	}
	return names
}
