package snapshot_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uffdtest"
)

// TestLazyRestoreFromSnapshot is the whole resume path of a paused capsule's
// memory: a sparse memory file is paused (full image), changed and paused
// again (diff over the parent, merged per maxDiffGenerations), and the
// published image is then served to a Firecracker-like peer by the
// userfaultfd page server straight from the snapshot reader. Every byte the
// guest sees must equal the second memory file.
func TestLazyRestoreFromSnapshot(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	size := int64(64 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 11))
	mem := make([]byte, size)
	for range size / 4096 / 10 { // ~10 % of pages hold data
		off := rng.Int64N(size/4096) * 4096
		for i := range int64(4096) {
			mem[off+i] = byte(rng.UintN(255) + 1)
		}
	}
	raw := filepath.Join(dir, "mem")
	if err := os.WriteFile(raw, mem, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenLocal(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	mgr := &snapshot.Manager{Store: st, TempDir: dir}
	if _, err := mgr.Pause(ctx, "cl-test-gen1", raw, snapshot.PauseOptions{Metadata: map[string]string{"template_id": "base"}}); err != nil {
		t.Fatal(err)
	}
	for range 200 { // the capsule runs on: touch some pages, zero some others
		off := rng.Int64N(size/4096) * 4096
		fill := byte(0)
		if rng.IntN(4) > 0 {
			fill = byte(rng.UintN(255) + 1)
		}
		for i := range int64(4096) {
			mem[off+i] = fill
		}
	}
	if err := os.WriteFile(raw, mem, 0o600); err != nil {
		t.Fatal(err)
	}
	hdr, err := mgr.Pause(ctx, "cl-test-gen2", raw, snapshot.PauseOptions{Parent: "cl-test-gen1"})
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Generation < 1 {
		t.Fatalf("generation %d", hdr.Generation)
	}
	rd, err := mgr.Open(context.Background(), "cl-test-gen2")
	if err != nil {
		t.Fatal(err)
	}
	if got := rd.Metadata()["template_id"]; got != "base" {
		t.Errorf("template id after re-pause = %q, want base (survives pause/resume)", got)
	}

	var src uffd.Source = rd // the snapshot reader is the page server's source
	srv, err := uffd.Listen(filepath.Join(dir, "uffd.sock"), uffd.Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	t.Cleanup(func() { _ = srv.Close() })

	peer, err := uffdtest.NewPeer([]uffdtest.Region{{Size: size}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	if err := peer.Connect(srv.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := peer.Verify(src, peer.Pages(3), 4, nil); err != nil {
		t.Fatal(err)
	}
	// And against the memory itself, not only the reader.
	for off := int64(0); off < size; off += 4096 {
		uffdtest.Touch(peer.Mems[0][off : off+4096])
	}
	if !bytes.Equal(peer.Mems[0], mem) {
		t.Fatal("guest memory differs from the paused memory file")
	}
	if err := peer.Hangup(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Serve after peer exit: %v", err)
	}
}
