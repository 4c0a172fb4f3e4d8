package hostagent_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// headerFailStore is a real local store whose header writes fail while
// fail is set: a publish (the header is its commit point) fails after the
// driver stopped the capsule, as on a host whose disk is full.
type headerFailStore struct {
	snapstore.Store
	fail atomic.Bool
}

func (s *headerFailStore) PutHeader(ctx context.Context, name string, b []byte) error {
	if s.fail.Load() {
		return errors.New("no space left on device (test)")
	}
	return s.Store.PutHeader(ctx, name, b)
}

// TestFailedPauseToDiskRestartsCapsule: a pause to disk whose publish
// fails (the capsule's processes already stopped) answers the error and
// leaves the capsule running again with its files — not a "running"
// capsule without processes that ends in error (found by the fleet chaos
// suite: a drain's pause on a host whose disk was full). A later pause to
// disk works.
func TestFailedPauseToDiskRestartsCapsule(t *testing.T) {
	d := newDirs(t)
	fs := &headerFailStore{}
	d.tweakDriver = func(c *container.Config) {
		st, err := snapstore.OpenLocal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		fs.Store = st
		c.Snapshots = &snapshot.Manager{Store: fs, TempDir: t.TempDir()}
	}
	h := startHost(t, d, nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	execOK(t, c, id, "/bin/sh", "-c", "echo kept > /root/f")

	fs.fail.Store(true)
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true})); err == nil {
		t.Fatal("pause to disk succeeded with a store that refuses headers")
	}
	fs.fail.Store(false)
	got, err := c.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if st := got.Msg.GetCapsule().GetState(); st != pb.CapsuleState_CAPSULE_STATE_RUNNING {
		t.Fatalf("after the failed pause the capsule is %v, want running", st)
	}
	if out := execOK(t, c, id, "/bin/cat", "/root/f"); out != "kept\n" {
		t.Fatalf("file after the failed pause: %q", out)
	}
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true})); err != nil {
		t.Fatalf("pause to disk once the store works: %v", err)
	}
	if _, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
	if out := execOK(t, c, id, "/bin/cat", "/root/f"); out != "kept\n" {
		t.Fatalf("file after pause and resume: %q", out)
	}
	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
}
