package snapshot

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestManagerOverS3 runs the pause/re-pause/resume/GC flow against a real S3
// server, reading through the chunk cache as a host resuming a capsule
// paused elsewhere does.
func TestManagerOverS3(t *testing.T) {
	const bs = 4096
	ctx := testutil.Context(t, testutil.Long)
	remote, err := store.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := store.NewCache(remote, t.TempDir(), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	dir := t.TempDir()
	m := &Manager{Store: cache, MaxDiffGenerations: 2, TempDir: dir}

	rng := rand.New(rand.NewPCG(3, 3))
	data := make([]byte, 2048*bs)
	for range 200 {
		p := rng.IntN(2048)
		for i := range bs {
			data[p*bs+i] = byte(rng.Uint32()) | 1
		}
	}
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, data, bs, func(int64) bool { return true })
	h0, err := m.Pause(ctx, "cl-1", raw, PauseOptions{Metadata: map[string]string{"template_id": "base"}})
	if err != nil {
		t.Fatal(err)
	}
	// Re-pause with a dirty bitmap: a diff (chain of 2 is allowed).
	dirty := NewBitmap(2048)
	for range 20 {
		p := rng.IntN(2048)
		dirty.Set(int64(p))
		for i := range bs {
			data[p*bs+i] = byte(rng.Uint32()) | 2
		}
	}
	writeRaw(t, raw, data, bs, dirty.Test)
	h1, err := m.Pause(ctx, "cl-1", raw, PauseOptions{Parent: "cl-1", Dirty: dirty, Metadata: map[string]string{"template_id": "base"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(h1.Builds) != 2 || h1.BaseBuildID != h0.BuildID || h1.Generation != 1 {
		t.Fatalf("diff header: builds %d base %s generation %d", len(h1.Builds), h1.BaseBuildID, h1.Generation)
	}
	r, err := m.Open(ctx, "cl-1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, r), data) {
		t.Fatal("content read through the cache differs")
	}
	if r.Metadata()["template_id"] != "base" {
		t.Fatalf("template id lost: %v", r.Metadata())
	}
	_ = r.Close()
	fetched := cache.Stats().FetchedBytes
	// A second full read is served from local disk.
	r, err = m.Open(ctx, "cl-1")
	if err != nil {
		t.Fatal(err)
	}
	_ = readAll(t, r)
	_ = r.Close()
	if got := cache.Stats().FetchedBytes; got != fetched {
		t.Fatalf("second read fetched %d more bytes", got-fetched)
	}
	// The third pause exceeds the chain limit and merges; GC then removes
	// both old builds from S3.
	copy(data[7*bs:], "third")
	writeRaw(t, raw, data, bs, func(int64) bool { return true })
	h2, err := m.Pause(ctx, "cl-1", raw, PauseOptions{Parent: "cl-1"})
	if err != nil {
		t.Fatal(err)
	}
	if h2.Metadata["template_id"] != "base" {
		t.Fatalf("template id not inherited by the re-pause: %v", h2.Metadata)
	}
	if len(h2.Builds) != 1 || h2.Generation != 2 {
		t.Fatalf("merged header: builds %d generation %d", len(h2.Builds), h2.Generation)
	}
	stats, err := m.GC(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Deleted) != 2 {
		t.Fatalf("GC deleted %v, want the 2 superseded builds", stats.Deleted)
	}
	objs, err := remote.ListData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != h2.BuildID.String() {
		t.Fatalf("S3 holds %v after GC, want only %s", objs, h2.BuildID)
	}
	r, err = m.Open(ctx, "cl-1")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !bytes.Equal(readAll(t, r), data) {
		t.Fatal("merged content differs")
	}
	// Restore to a file straight from S3 without the cache too.
	direct, err := OpenReader(ctx, remote, "cl-1")
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	out := filepath.Join(dir, "restored")
	if err := direct.WriteFile(ctx, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restore from S3 differs (err %v)", err)
	}
}

// TestReaderConcurrent reads one image from many goroutines at once, as the
// page server's fault handler and prefetcher do.
func TestReaderConcurrent(t *testing.T) {
	const bs = 4096
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(4, 4))
	data := make([]byte, 512*bs+100)
	for range 150 {
		p := rng.IntN(512)
		for i := range bs {
			data[p*bs+i] = byte(rng.Uint32())
		}
	}
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, data, bs, func(int64) bool { return true })
	m := &Manager{Store: openLocal(t), TempDir: dir}
	if _, err := m.Pause(ctx, "img", raw, PauseOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := m.Open(ctx, "img")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			buf := make([]byte, bs)
			for range 300 {
				if rng.IntN(2) == 0 {
					blk := rng.Int64N(r.Header().Blocks())
					zero, err := r.ReadBlock(blk, buf)
					if err != nil {
						t.Errorf("ReadBlock(%d): %v", blk, err)
						return
					}
					want := data[blk*bs : min((blk+1)*bs, int64(len(data)))]
					if zero && !isZero(want) || !zero && !bytes.Equal(buf[:len(want)], want) {
						t.Errorf("ReadBlock(%d) wrong", blk)
						return
					}
					continue
				}
				off := rng.IntN(len(data))
				l := rng.IntN(3*bs) + 1
				p := make([]byte, l)
				n, err := r.ReadAt(p, int64(off))
				if err != nil && !errors.Is(err, io.EOF) {
					t.Errorf("ReadAt: %v", err)
					return
				}
				if !bytes.Equal(p[:n], data[off:off+n]) || n != min(l, len(data)-off) {
					t.Errorf("ReadAt(%d, %d) wrong", off, l)
					return
				}
			}
		}()
	}
	wg.Wait()
}
