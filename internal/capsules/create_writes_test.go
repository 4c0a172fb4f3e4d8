package capsules_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// countingStore counts the capsule row's status and timeout writes.
type countingStore struct {
	store.Store
	status, timeout atomic.Int32
	from            []store.CapsuleStatus
}

func (s *countingStore) UpdateCapsuleStatus(ctx context.Context, teamID, id string, from, to store.CapsuleStatus) (bool, error) {
	s.status.Add(1)
	s.from = append(s.from, from)
	return s.Store.UpdateCapsuleStatus(ctx, teamID, id, from, to)
}

func (s *countingStore) SetCapsuleTimeout(ctx context.Context, teamID, id string, timeoutSec int64, expiresAt *time.Time) error {
	s.timeout.Add(1)
	return s.Store.SetCapsuleTimeout(ctx, teamID, id, timeoutSec, expiresAt)
}

// TestCreateStoreWrites: a create inserts the row as starting and moves it
// to running in one more write; the host's expiry is written only when it
// differs from the one inserted (issue 21: fewer store writes per create).
func TestCreateStoreWrites(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	cs := &countingStore{Store: f.st}
	cfg := f.cfg
	cfg.Store = cs
	svc := capsules.New(cfg)
	tmpl := "minimal"

	// The host's expiry is the one the control plane computed.
	var c store.Capsule
	for range 3 { // a second boundary between the two clocks: retry
		cs.status.Store(0)
		cs.timeout.Store(0)
		cs.from = nil
		f.ag.mu.Lock()
		f.ag.expiresAt = time.Now().Add(300 * time.Second).Unix()
		f.ag.mu.Unlock()
		out, err := svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
		if err != nil {
			t.Fatal(err)
		}
		c = out.Capsule
		if cs.timeout.Load() == 0 {
			break
		}
	}
	if n := cs.status.Load(); n != 1 || cs.from[0] != store.CapsuleStarting {
		t.Errorf("status writes %d from %v; want 1 (starting → running)", n, cs.from)
	}
	if n := cs.timeout.Load(); n != 0 {
		t.Errorf("timeout writes %d; want 0 when the host's expiry is the inserted one", n)
	}
	if c.Status != store.CapsuleRunning || c.ExpiresAt == nil || c.ExpiresAt.Unix() != f.ag.expiresAt {
		t.Errorf("created %s expiring %v; want running, expiring at %d", c.Status, c.ExpiresAt, f.ag.expiresAt)
	}

	// A host whose expiry differs: written.
	cs.timeout.Store(0)
	f.ag.mu.Lock()
	f.ag.expiresAt = time.Now().Add(time.Hour).Unix()
	f.ag.mu.Unlock()
	out, err := svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	if n := cs.timeout.Load(); n != 1 || out.Capsule.ExpiresAt == nil || out.Capsule.ExpiresAt.Unix() != f.ag.expiresAt {
		t.Errorf("timeout writes %d, expiry %v; want the host's %d written", n, out.Capsule.ExpiresAt, f.ag.expiresAt)
	}
}
