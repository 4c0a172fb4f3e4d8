package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// testStore is the conformance suite every backend passes.
func testStore(t *testing.T, st store.Store) {
	ctx := testutil.Context(t, testutil.Long)
	data := make([]byte, 3<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}

	t.Run("data round trip and random reads", func(t *testing.T) {
		if err := st.PutData(ctx, "b1", bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		blob, err := st.OpenData(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		defer blob.Close()
		if blob.Size() != int64(len(data)) {
			t.Fatalf("size = %d, want %d", blob.Size(), len(data))
		}
		for range 20 {
			off := rng.IntN(len(data))
			l := rng.IntN(min(len(data)-off, 300000)) + 1
			p := make([]byte, l)
			n, err := blob.ReadAt(p, int64(off))
			if err != nil && !errors.Is(err, io.EOF) || n != l {
				t.Fatalf("ReadAt(%d, %d) = %d, %v", off, l, n, err)
			}
			if !bytes.Equal(p, data[off:off+l]) {
				t.Fatalf("ReadAt(%d, %d) content differs", off, l)
			}
		}
		// Reading past the end is a short read with io.EOF.
		p := make([]byte, 10)
		n, err := blob.ReadAt(p, int64(len(data)-4))
		if n != 4 || !errors.Is(err, io.EOF) || !bytes.Equal(p[:4], data[len(data)-4:]) {
			t.Fatalf("ReadAt past end = %d, %v", n, err)
		}
	})
	t.Run("missing objects", func(t *testing.T) {
		if _, err := st.OpenData(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("OpenData(missing) err = %v, want ErrNotFound", err)
		}
		if _, err := st.GetHeader(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetHeader(missing) err = %v, want ErrNotFound", err)
		}
		if err := st.DeleteData(ctx, "nope"); err != nil {
			t.Fatalf("DeleteData(missing) = %v", err)
		}
		if err := st.DeleteHeader(ctx, "nope"); err != nil {
			t.Fatalf("DeleteHeader(missing) = %v", err)
		}
	})
	t.Run("headers replace atomically", func(t *testing.T) {
		for _, v := range []string{"one", "two, longer"} {
			if err := st.PutHeader(ctx, "cap-1", []byte(v)); err != nil {
				t.Fatal(err)
			}
			got, err := st.GetHeader(ctx, "cap-1")
			if err != nil || string(got) != v {
				t.Fatalf("GetHeader = %q, %v; want %q", got, err, v)
			}
		}
		if err := st.PutHeader(ctx, "cap-2", []byte("x")); err != nil {
			t.Fatal(err)
		}
		names, err := st.ListHeaders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"cap-1", "cap-2"}) {
			t.Fatalf("ListHeaders = %v", names)
		}
		if err := st.DeleteHeader(ctx, "cap-2"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.GetHeader(ctx, "cap-2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deleted header: err = %v", err)
		}
	})
	t.Run("list and delete data", func(t *testing.T) {
		if err := st.PutData(ctx, "b2", bytes.NewReader([]byte("hi")), 2); err != nil {
			t.Fatal(err)
		}
		objs, err := st.ListData(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int64{}
		for _, o := range objs {
			got[o.Name] = o.Size
			if time.Since(o.ModTime) > time.Hour || time.Until(o.ModTime) > time.Minute {
				t.Fatalf("object %s has implausible mod time %v", o.Name, o.ModTime)
			}
		}
		if got["b1"] != int64(len(data)) || got["b2"] != 2 || len(got) != 2 {
			t.Fatalf("ListData = %v", got)
		}
		if err := st.DeleteData(ctx, "b2"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.OpenData(ctx, "b2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deleted data: err = %v", err)
		}
	})
	t.Run("cancelled put leaves nothing", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		r := &cancelAfter{r: bytes.NewReader(data), n: 1 << 20, cancel: cancel}
		if err := st.PutData(cctx, "b3", r, int64(len(data))); err == nil {
			t.Fatal("PutData with a cancelled context succeeded")
		}
		if _, err := st.OpenData(ctx, "b3"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a cancelled PutData left an object: err = %v", err)
		}
		// A short body is an error, not a short object.
		if err := st.PutData(ctx, "b4", bytes.NewReader(data[:10]), 20); err == nil {
			t.Fatal("PutData with a short body succeeded")
		}
		if _, err := st.OpenData(ctx, "b4"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a short PutData left an object: err = %v", err)
		}
	})
	t.Run("bad names rejected", func(t *testing.T) {
		for _, n := range []string{"", "../x", "a/b", ".hidden", string(make([]byte, 129))} {
			if err := st.PutHeader(ctx, n, []byte("x")); err == nil {
				t.Fatalf("PutHeader(%q) succeeded", n)
			}
		}
	})
}

// cancelAfter cancels a context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
		return 0, context.Canceled
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func TestLocal(t *testing.T) {
	st, err := store.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, st)
	n, err := st.CleanTemp(0)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(st.Root(), "tmp"))
	if len(ents) != 0 {
		t.Fatalf("tmp not empty after CleanTemp (removed %d): %v", n, ents)
	}
}

func TestS3(t *testing.T) {
	st, err := store.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, st)
}

func TestCacheOverS3(t *testing.T) {
	s3, err := store.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(s3, t.TempDir(), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	testStore(t, c)
}

func TestCacheFetchesOnlyNeededChunks(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	remote, err := store.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 64 << 10
	data := make([]byte, 40*chunk+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := remote.PutData(ctx, "big", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c, err := store.NewCache(remote, dir, chunk)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := c.OpenData(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	read := func(off, l int) {
		t.Helper()
		p := make([]byte, l)
		n, err := blob.ReadAt(p, int64(off))
		if err != nil && !errors.Is(err, io.EOF) || n != l || !bytes.Equal(p, data[off:off+l]) {
			t.Fatalf("ReadAt(%d,%d) = %d, %v (content equal %v)", off, l, n, err, bytes.Equal(p, data[off:off+l]))
		}
	}
	read(5*chunk+10, 100)   // chunk 5
	read(5*chunk+4000, 100) // chunk 5 again: a hit
	read(9*chunk-50, 100)   // chunks 8 and 9
	read(len(data)-30, 30)  // last, partial chunk 40
	if got := c.Stats(); got.Fetches != 4 || got.FetchedBytes != 3*chunk+100 {
		t.Fatalf("stats = %+v, want 4 fetches of 3 chunks + 100 bytes", got)
	}
	// Many concurrent readers of one chunk fetch it once.
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 10)
			if _, err := blob.ReadAt(p, 20*chunk+3); err != nil || !bytes.Equal(p, data[20*chunk+3:20*chunk+13]) {
				t.Errorf("concurrent ReadAt: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := c.Stats().Fetches; got != 5 {
		t.Fatalf("fetches after concurrent reads of one chunk = %d, want 5", got)
	}
	_ = blob.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// A new Cache over the same directory reuses what was fetched, and a
	// damaged cached chunk is detected and refetched, not served.
	raw, err := os.ReadFile(filepath.Join(dir, "big.cache"))
	if err != nil {
		t.Fatal(err)
	}
	raw[8*chunk+1] ^= 0xff
	if err := os.WriteFile(filepath.Join(dir, "big.cache"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := store.NewCache(remote, dir, chunk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c2.Close() })
	blob, err = c2.OpenData(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	read(5*chunk, chunk)   // still cached
	read(8*chunk, 2*chunk) // chunk 8 damaged: refetched; chunk 9 cached
	read(20*chunk, 10)     // cached
	if got := c2.Stats().Fetches; got != 1 {
		t.Fatalf("fetches after reopening = %d, want 1 (the damaged chunk)", got)
	}
	// DeleteData drops the local copy too.
	if err := c2.DeleteData(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "big.cache")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cache file survives DeleteData: %v", err)
	}
}

func TestCacheTrim(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	remote, err := store.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 64 << 10
	data := bytes.Repeat([]byte{7}, 4*chunk)
	for _, id := range []string{"old", "mid", "new"} {
		if err := remote.PutData(ctx, id, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	c, err := store.NewCache(remote, dir, chunk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	for i, id := range []string{"old", "mid", "new"} {
		blob, err := c.OpenData(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := blob.ReadAt(make([]byte, len(data)), 0); err != nil {
			t.Fatal(err)
		}
		_ = blob.Close()
		// Distinct last-use times, oldest first.
		when := time.Now().Add(time.Duration(i-3) * time.Minute)
		if err := os.Chtimes(filepath.Join(dir, id+".idx"), when, when); err != nil {
			t.Fatal(err)
		}
	}
	usage, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if usage < 3*int64(len(data)) {
		t.Fatalf("usage %d, want at least %d", usage, 3*len(data))
	}
	evicted, err := c.Trim(usage - 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(evicted, []string{"old"}) {
		t.Fatalf("Trim evicted %v, want [old]", evicted)
	}
	if evicted, err = c.Trim(0); err != nil || !slices.Equal(evicted, []string{"mid", "new"}) {
		t.Fatalf("Trim(0) evicted %v, %v", evicted, err)
	}
	if usage, _ := c.Usage(); usage != 0 {
		t.Fatalf("usage after Trim(0) = %d", usage)
	}
	// An evicted build is fetched again on demand.
	fetches := c.Stats().Fetches
	blob, err := c.OpenData(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	p := make([]byte, 10)
	if _, err := blob.ReadAt(p, chunk); err != nil || !bytes.Equal(p, data[:10]) {
		t.Fatalf("read after eviction: %v", err)
	}
	if c.Stats().Fetches != fetches+1 {
		t.Fatal("evicted chunk was not refetched")
	}
}
