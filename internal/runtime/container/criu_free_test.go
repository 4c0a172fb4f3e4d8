package container_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestCRIUImagesFreedOnSupersedeAndDestroy: pause → resume → pause →
// delete leaves no snapshot data on disk. Before, superseded and deleted
// memory images waited for the age-bounded GC (minutes to an hour).
func TestCRIUImagesFreedOnSupersedeAndDestroy(t *testing.T) {
	d := criuDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	id := "cl-criu-free"
	info := startCapsule(t, d, runtime.Spec{ID: id})
	startCounter(ctx, t, d, info)
	m := d.SnapshotManager()
	stored := func() (n int, bytes int64) {
		objs, err := m.Store.ListData(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			bytes += o.Size
		}
		return len(objs), bytes
	}
	snap1, err := d.Snapshot(ctx, id)
	if err != nil || !snap1.MemoryKept {
		t.Fatalf("Snapshot: %+v, %v", snap1, err)
	}
	n1, b1 := stored()
	if info, err = d.Restore(ctx, snap1); err != nil || !info.MemoryKept {
		t.Fatalf("Restore: %+v, %v", info, err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	snap2, err := d.Snapshot(ctx, id)
	if err != nil || !snap2.MemoryKept {
		t.Fatalf("second Snapshot: %+v, %v", snap2, err)
	}
	n2, b2 := stored()
	// The first memory image is superseded: only data the live headers
	// reference remains (about one generation's worth, not two).
	live := map[string]bool{}
	for _, k := range snap2.Keys {
		r, err := m.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range r.Header().Builds {
			live[b.ID.String()] = true
		}
		_ = r.Close()
	}
	objs, _ := m.Store.ListData(ctx)
	for _, o := range objs {
		if !live[o.Name] {
			t.Errorf("data %s (%d bytes) no live snapshot references is still stored", o.Name, o.Size)
		}
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	n3, b3 := stored()
	t.Logf("stored after pause: %d objects, %d bytes; after a second pause: %d, %d bytes; after delete: %d, %d bytes", n1, b1, n2, b2, n3, b3)
	if n3 != 0 || b3 != 0 {
		t.Errorf("after delete %d data objects (%d bytes) remain, want none", n3, b3)
	}
	assertClean(t, d)
}
