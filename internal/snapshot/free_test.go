package snapshot

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestDeleteAndFreeFreesAtOnce: deleting a superseded snapshot frees the
// data only it referenced at once (not after GC's minimum age), keeps the
// data its successor still references, and deleting the last one of a
// chain leaves no data at all; a missing header is no error.
func TestDeleteAndFreeFreesAtOnce(t *testing.T) {
	const bs = 4096
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	st := openLocal(t)
	m := &Manager{Store: st, MaxDiffGenerations: 10, TempDir: dir}
	data := make([]byte, 8*bs)
	raw := filepath.Join(dir, "raw")
	pause := func(name, parent string, fill byte, at int) *Header {
		t.Helper()
		copy(data[at*bs:], bytes.Repeat([]byte{fill}, bs))
		writeRaw(t, raw, data, bs, func(int64) bool { return true })
		h, err := m.Pause(ctx, name, raw, PauseOptions{Parent: parent})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	dataIDs := func() []string {
		objs, err := st.ListData(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range objs {
			out = append(out, o.Name)
		}
		slices.Sort(out)
		return out
	}
	// A memory image on its own, then its successor (no parent: memory
	// images are whole) and a disk chain: gen1, then gen2 diffing on gen1.
	mem1 := pause("cap.criu", "", 1, 0)
	disk1 := pause("cap-1", "", 2, 1)
	disk2 := pause("cap-2", "cap-1", 3, 2)
	other := pause("other", "", 4, 3)
	if len(dataIDs()) != 4 {
		t.Fatalf("data objects %v, want 4", dataIDs())
	}
	// The first disk snapshot is superseded: gen2 still references its build.
	stats, err := m.DeleteAndFree(ctx, "cap-1")
	if err != nil || len(stats.Deleted) != 0 {
		t.Fatalf("free superseded parent: %+v, %v; want nothing freed (the child uses it)", stats, err)
	}
	// The memory image is superseded: freed at once.
	stats, err = m.DeleteAndFree(ctx, "cap.criu")
	if err != nil || len(stats.Deleted) != 1 || stats.Deleted[0] != mem1.BuildID.String() || stats.DeletedBytes <= 0 {
		t.Fatalf("free memory image: %+v, %v", stats, err)
	}
	// The capsule is deleted: its whole chain goes; another's data stays.
	if _, err := m.DeleteAndFree(ctx, "cap-2"); err != nil {
		t.Fatal(err)
	}
	want := []string{other.BuildID.String()}
	if got := dataIDs(); !slices.Equal(got, want) {
		t.Fatalf("data left %v, want only %v (disk builds %s %s)", got, want, disk1.BuildID, disk2.BuildID)
	}
	if _, err := m.DeleteAndFree(ctx, "never-was"); err != nil {
		t.Fatalf("missing header: %v", err)
	}
}
