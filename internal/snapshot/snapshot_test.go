package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// writeRaw writes img to a sparse file: only blocks touched are written, so
// untouched blocks are holes. A touched block may still be all zeros.
func writeRaw(t testing.TB, path string, data []byte, bs int64, touched func(blk int64) bool) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for blk := int64(0); blk*bs < int64(len(data)); blk++ {
		if !touched(blk) {
			continue
		}
		end := min((blk+1)*bs, int64(len(data)))
		if _, err := f.WriteAt(data[blk*bs:end], blk*bs); err != nil {
			t.Fatal(err)
		}
	}
}

// genImage draws a random sparse image of up to maxBlocks blocks.
func genImage(t *rapid.T, bs int64, maxBlocks int) (data []byte, touched map[int64]bool) {
	nblocks := rapid.IntRange(0, maxBlocks).Draw(t, "blocks")
	tail := rapid.SampledFrom([]int64{0, 0, 1, bs / 2, bs - 1}).Draw(t, "tail")
	size := int64(nblocks)*bs + tail
	if nblocks == 0 && tail == 0 {
		size = 0
	}
	data = make([]byte, size)
	touched = map[int64]bool{}
	nw := rapid.IntRange(0, 12).Draw(t, "writes")
	for range nw {
		if size == 0 {
			break
		}
		off := rapid.Int64Range(0, size-1).Draw(t, "off")
		l := rapid.Int64Range(1, min(size-off, 3*bs)).Draw(t, "len")
		kind := rapid.IntRange(0, 3).Draw(t, "kind")
		for i := off; i < off+l; i++ {
			switch kind {
			case 0: // explicit zeros written into the file (data, not a hole)
				data[i] = 0
			default:
				data[i] = byte(i*31+int64(kind)) | 1
			}
		}
		for b := off / bs; b <= (off+l-1)/bs; b++ {
			touched[b] = true
		}
	}
	return data, touched
}

func nonZeroBlocks(data []byte, bs int64) int64 {
	var n int64
	for off := int64(0); off < int64(len(data)); off += bs {
		if !isZero(data[off:min(off+bs, int64(len(data)))]) {
			n++
		}
	}
	return n
}

func readAll(t testing.TB, r *Reader) []byte {
	t.Helper()
	got := make([]byte, r.Size())
	n, err := r.ReadAt(got, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt: %v", err)
	}
	if int64(n) != r.Size() {
		t.Fatalf("ReadAt read %d of %d bytes", n, r.Size())
	}
	return got
}

func openLocal(t testing.TB) *store.Local {
	t.Helper()
	st, err := store.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestProcessRoundTrip(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		bs := rapid.SampledFrom([]int64{4096, 4096, 8192}).Draw(rt, "bs")
		data, touched := genImage(rt, bs, 64)
		dir := t.TempDir()
		raw := filepath.Join(dir, "raw")
		writeRaw(t, raw, data, bs, func(b int64) bool { return touched[b] })
		ctx := testutil.Context(t, testutil.Long)
		img, err := ProcessFile(ctx, raw, Options{BlockSize: bs, TempDir: dir, Metadata: map[string]string{"template": "base"}})
		if err != nil {
			rt.Fatalf("ProcessFile: %v", err)
		}
		defer img.Remove()
		if got, want := img.Header.Counts().Stored, nonZeroBlocks(data, bs); got != want {
			rt.Fatalf("stored blocks = %d, want %d (non-zero blocks)", got, want)
		}
		for i := 1; i < len(img.Header.Mappings); i++ {
			a, b := img.Header.Mappings[i-1], img.Header.Mappings[i]
			if a.Zero && b.Zero || !a.Zero && !b.Zero && a.Build == b.Build && a.DataBlock+a.Count == b.DataBlock {
				rt.Fatalf("mappings %d and %d not coalesced: %+v %+v", i-1, i, a, b)
			}
		}
		st := openLocal(t)
		if err := Publish(ctx, st, "img", img); err != nil {
			rt.Fatalf("Publish: %v", err)
		}
		r, err := OpenReader(ctx, st, "img")
		if err != nil {
			rt.Fatalf("OpenReader: %v", err)
		}
		defer r.Close()
		if got := readAll(t, r); !bytes.Equal(got, data) {
			rt.Fatalf("restore(process(x)) != x")
		}
		if order := rapid.SliceOfN(rapid.Int64Range(0, int64(len(data))+bs), 0, 8).Draw(rt, "order"); len(order) > 0 {
			blocks := OffsetsToBlocks(order, bs)
			for i, b := range blocks {
				if slices.Contains(blocks[:i], b) {
					rt.Fatalf("OffsetsToBlocks(%v) repeats block %d", order, b)
				}
			}
		}
		if r.Metadata()["template"] != "base" {
			rt.Fatalf("metadata lost: %v", r.Metadata())
		}
		// Every block agrees with IsZero / ReadBlock.
		buf := make([]byte, bs)
		for blk := int64(0); blk < r.Header().Blocks(); blk++ {
			zero, err := r.ReadBlock(blk, buf)
			if err != nil {
				rt.Fatalf("ReadBlock(%d): %v", blk, err)
			}
			end := min((blk+1)*bs, int64(len(data)))
			want := data[blk*bs : end]
			if zero != r.IsZero(blk*bs) || zero != isZero(want) {
				rt.Fatalf("block %d: zero=%v IsZero=%v data zero=%v", blk, zero, r.IsZero(blk*bs), isZero(want))
			}
			if !zero && !bytes.Equal(buf[:len(want)], want) {
				rt.Fatalf("block %d content differs", blk)
			}
		}
		// Unaligned reads.
		if len(data) > 0 {
			off := rapid.IntRange(0, len(data)-1).Draw(rt, "roff")
			l := rapid.IntRange(1, len(data)-off).Draw(rt, "rlen")
			p := make([]byte, l)
			if _, err := r.ReadAt(p, int64(off)); err != nil && !errors.Is(err, io.EOF) {
				rt.Fatalf("ReadAt(%d,%d): %v", off, l, err)
			}
			if !bytes.Equal(p, data[off:off+l]) {
				rt.Fatalf("ReadAt(%d,%d) content differs", off, l)
			}
		}
		// Materialise to a file.
		out := filepath.Join(dir, "restored")
		if err := r.WriteFile(ctx, out); err != nil {
			rt.Fatalf("WriteFile: %v", err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			rt.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			rt.Fatalf("materialised file differs")
		}
	})
}

func TestHugeBlocks(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	data := make([]byte, 5*HugeBlockSize+12345)
	copy(data[HugeBlockSize+7:], "hello")
	copy(data[4*HugeBlockSize:], bytes.Repeat([]byte{9}, HugeBlockSize+100))
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, data, HugeBlockSize, func(int64) bool { return true })
	img, err := ProcessFile(ctx, raw, Options{BlockSize: HugeBlockSize, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Remove()
	if got, want := img.Header.Counts(), (Counts{Zero: 3, Stored: 3}); got != want {
		t.Fatalf("counts = %+v, want %+v", got, want)
	}
	r, err := NewReader(img.Header, func(BuildID) (store.Blob, error) { return OpenFile(img.DataPath) })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := readAll(t, r); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

// chainStep applies random writes to data and returns the dirty blocks.
func chainStep(rt *rapid.T, data []byte, bs int64, gen int) map[int64]bool {
	dirty := map[int64]bool{}
	size := int64(len(data))
	if size == 0 {
		return dirty
	}
	for range rapid.IntRange(0, 8).Draw(rt, "writes") {
		off := rapid.Int64Range(0, size-1).Draw(rt, "off")
		l := rapid.Int64Range(1, min(size-off, 2*bs)).Draw(rt, "len")
		kind := rapid.IntRange(0, 2).Draw(rt, "kind")
		for i := off; i < off+l; i++ {
			switch kind {
			case 0:
				data[i] = 0
			case 1: // rewrite with the same bytes: dirty but unchanged
			default:
				data[i] = byte(int64(gen)*7+i) | 0x80
			}
		}
		for b := off / bs; b <= (off+l-1)/bs; b++ {
			dirty[b] = true
		}
	}
	return dirty
}

func TestDiffGenerations(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		const bs = 4096
		ctx := testutil.Context(t, testutil.Long)
		dir := t.TempDir()
		st := openLocal(t)
		m := &Manager{Store: st, MaxDiffGenerations: 1000, TempDir: dir}
		data, touched := genImage(rt, bs, 48)
		raw := filepath.Join(dir, "raw")
		writeRaw(t, raw, data, bs, func(b int64) bool { return touched[b] })
		h, err := m.Pause(ctx, "g0", raw, PauseOptions{})
		if err != nil {
			rt.Fatalf("Pause g0: %v", err)
		}
		gens := rapid.IntRange(1, 10).Draw(rt, "generations")
		parent := "g0"
		for g := 1; g <= gens; g++ {
			dirty := chainStep(rt, data, bs, g)
			useBitmap := rapid.Bool().Draw(rt, "bitmap")
			var bm *Bitmap
			if useBitmap {
				// Like a Firecracker diff snapshot: only dirty blocks are in
				// the file, the rest are holes that must NOT read as zero.
				bm = NewBitmap(blocksFor(int64(len(data)), bs))
				for b := range dirty {
					bm.Set(b)
				}
				writeRaw(t, raw, data, bs, func(b int64) bool { return dirty[b] })
			} else {
				writeRaw(t, raw, data, bs, func(b int64) bool { return true })
			}
			name := fmt.Sprintf("g%d", g)
			nh, err := m.Pause(ctx, name, raw, PauseOptions{Parent: parent, Dirty: bm})
			if err != nil {
				rt.Fatalf("Pause gen %d: %v", g, err)
			}
			if nh.Generation != h.Generation+1 || nh.BaseBuildID != h.BuildID {
				rt.Fatalf("gen %d: generation %d base %s, want %d base %s", g, nh.Generation, nh.BaseBuildID, h.Generation+1, h.BuildID)
			}
			if stored := nh.Counts().Stored; stored > int64(len(dirty)) {
				rt.Fatalf("gen %d stored %d blocks, only %d dirty", g, stored, len(dirty))
			}
			r, err := m.Open(ctx, name)
			if err != nil {
				rt.Fatalf("open gen %d: %v", g, err)
			}
			got := readAll(t, r)
			_ = r.Close()
			if !bytes.Equal(got, data) {
				rt.Fatalf("gen %d content differs (bitmap=%v)", g, useBitmap)
			}
			parent, h = name, nh
		}
		// Merge equivalence: the merged image reads the same, references
		// only its own build, and keeps generation and metadata.
		r, err := m.Open(ctx, parent)
		if err != nil {
			rt.Fatal(err)
		}
		defer r.Close()
		merged, err := Merge(ctx, r, Options{TempDir: dir})
		if err != nil {
			rt.Fatalf("Merge: %v", err)
		}
		defer merged.Remove()
		if len(merged.Header.Builds) > 1 || merged.Header.Generation != h.Generation || !merged.Header.BaseBuildID.IsZero() {
			rt.Fatalf("merged header: builds %d generation %d base %s", len(merged.Header.Builds), merged.Header.Generation, merged.Header.BaseBuildID)
		}
		if err := Publish(ctx, st, "merged", merged); err != nil {
			rt.Fatal(err)
		}
		mr, err := m.Open(ctx, "merged")
		if err != nil {
			rt.Fatal(err)
		}
		defer mr.Close()
		if got := readAll(t, mr); !bytes.Equal(got, data) {
			rt.Fatalf("merged content differs")
		}
		if got, want := mr.Header().Counts().Stored, nonZeroBlocks(data, bs); got != want {
			rt.Fatalf("merged stores %d blocks, want %d", got, want)
		}
	})
}

func TestPauseMergesPastMaxDiffGenerations(t *testing.T) {
	const bs = 4096
	for _, tc := range []struct {
		max        int
		wantBuilds []int // builds referenced after each pause
	}{
		{max: 0, wantBuilds: []int{1, 1, 1, 1}}, // default 1: merge every re-pause
		{max: 2, wantBuilds: []int{1, 2, 1, 2}},
		{max: 3, wantBuilds: []int{1, 2, 3, 1}},
	} {
		t.Run(fmt.Sprintf("max=%d", tc.max), func(t *testing.T) {
			ctx := testutil.Context(t, testutil.Long)
			dir := t.TempDir()
			m := &Manager{Store: openLocal(t), MaxDiffGenerations: tc.max, TempDir: dir}
			data := make([]byte, 16*bs)
			raw := filepath.Join(dir, "raw")
			for i, want := range tc.wantBuilds {
				copy(data[i*bs:], bytes.Repeat([]byte{byte(i + 1)}, bs))
				writeRaw(t, raw, data, bs, func(int64) bool { return true })
				o := PauseOptions{}
				if i > 0 {
					o.Parent = "cap"
				}
				h, err := m.Pause(ctx, "cap", raw, o)
				if err != nil {
					t.Fatal(err)
				}
				if got := len(h.Builds); got != want {
					t.Fatalf("pause %d: header references %d builds, want %d", i, got, want)
				}
				if h.Generation != uint64(i) {
					t.Fatalf("pause %d: generation %d", i, h.Generation)
				}
				if left, _ := filepath.Glob(filepath.Join(dir, "wrenn-snapshot-*")); len(left) != 0 {
					t.Fatalf("pause %d left temporary data files: %v", i, left)
				}
				r, err := m.Open(ctx, "cap")
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(readAll(t, r), data) {
					t.Fatalf("pause %d: content differs", i)
				}
				_ = r.Close()
			}
		})
	}
}

func TestGC(t *testing.T) {
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
	listData := func() []string {
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
	ids := func(hs ...*Header) []string {
		var out []string
		for _, h := range hs {
			for _, b := range h.Builds {
				if !slices.Contains(out, b.ID.String()) {
					out = append(out, b.ID.String())
				}
			}
		}
		slices.Sort(out)
		return out
	}

	tmpl := pause("tmpl", "", 1, 0)    // build A
	c1 := pause("cap1", "tmpl", 2, 1)  // A + B
	c1b := pause("cap1", "cap1", 3, 2) // A + B + C (replaces cap1)
	other := pause("other", "", 4, 3)  // D
	_ = pause("doomed", "other", 5, 4) // D + E
	if err := m.Delete(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	// An orphan upload (data without a header, as a crashed publish leaves).
	orphan := NewBuildID().String()
	if err := st.PutData(ctx, orphan, bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}

	// A young orphan survives a GC with a grace period.
	stats, err := m.GC(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Deleted) != 0 {
		t.Fatalf("GC with 1h grace deleted %v", stats.Deleted)
	}
	stats, err = m.GC(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := ids(tmpl, c1b, other)
	if got := listData(); !slices.Equal(got, want) {
		t.Fatalf("after GC data = %v, want %v", got, want)
	}
	if len(stats.Deleted) != 2 || stats.Headers != 3 {
		t.Fatalf("stats = %+v, want 2 deleted (E and the orphan) of 3 headers", stats)
	}
	_ = c1
	// Everything live still reads.
	for _, n := range []string{"tmpl", "cap1", "other"} {
		r, err := m.Open(ctx, n)
		if err != nil {
			t.Fatalf("open %s after GC: %v", n, err)
		}
		_ = readAll(t, r)
		_ = r.Close()
	}
	// Deleting the template keeps A alive: cap1 still references it.
	if err := m.Delete(ctx, "tmpl"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.GC(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got, want := listData(), ids(c1b, other); !slices.Equal(got, want) {
		t.Fatalf("after deleting tmpl data = %v, want %v", got, want)
	}
	// A corrupt header stops the sweep: nothing is deleted.
	if err := st.PutHeader(ctx, "broken", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	before := listData()
	if _, err := m.GC(ctx, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GC with a corrupt header: err = %v, want ErrCorrupt", err)
	}
	if got := listData(); !slices.Equal(got, before) {
		t.Fatalf("GC deleted data despite a corrupt header: %v -> %v", before, got)
	}
}

func TestCorruptDataRejected(t *testing.T) {
	const bs = 4096
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	st := openLocal(t)
	data := make([]byte, 6*bs)
	for i := range data[bs : 3*bs] {
		data[bs+i] = byte(i) | 1
	}
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, data, bs, func(int64) bool { return true })
	img, err := ProcessFile(ctx, raw, Options{TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := Publish(ctx, st, "img", img); err != nil {
		t.Fatal(err)
	}
	path := st.DataPath(img.Header.BuildID.String())
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		mutate   func([]byte) []byte
		failOpen bool // detected when opening, not only when reading
	}{
		{"flip block byte", func(b []byte) []byte { b[100] ^= 1; return b }, false},
		{"flip second block", func(b []byte) []byte { b[bs+5] ^= 0x40; return b }, false},
		{"flip crc table", func(b []byte) []byte { b[2*bs+1] ^= 1; return b }, true},
		{"flip footer", func(b []byte) []byte { b[len(b)-10] ^= 1; return b }, true},
		{"truncate", func(b []byte) []byte { return b[:len(b)-1] }, true},
		{"extend", func(b []byte) []byte { return append(b, 0) }, true},
		{"empty", func([]byte) []byte { return nil }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.mutate(slices.Clone(orig)), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.WriteFile(path, orig, 0o600) })
			r, err := OpenReader(ctx, st, "img")
			if tc.failOpen {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("OpenReader err = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenReader: %v", err)
			}
			defer r.Close()
			p := make([]byte, len(data))
			if _, err := r.ReadAt(p, 0); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("ReadAt err = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestBitmapNextRun(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.Int64Range(1, 300).Draw(rt, "n")
		b := NewBitmap(n)
		for _, i := range rapid.SliceOf(rapid.Int64Range(0, n-1)).Draw(rt, "set") {
			b.Set(i)
		}
		limit := rapid.Int64Range(1, n+70).Draw(rt, "limit")
		i := rapid.Int64Range(0, limit-1).Draw(rt, "i")
		want := i
		for want < limit && b.Test(want) == b.Test(i) {
			want++
		}
		if got := b.nextRun(i, limit); got != want {
			rt.Fatalf("nextRun(%d, %d) = %d, want %d", i, limit, got, want)
		}
	})
}

func TestBitmapCoarsen(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.Int64Range(1, 3000).Draw(rt, "n")
		factor := rapid.SampledFrom([]int64{1, 2, 8, 512}).Draw(rt, "factor")
		b := NewBitmap(n)
		for _, i := range rapid.SliceOf(rapid.Int64Range(0, n-1)).Draw(rt, "set") {
			b.Set(i)
		}
		c := b.Coarsen(factor)
		if c.Len() != (n+factor-1)/factor {
			rt.Fatalf("coarse len %d", c.Len())
		}
		for j := range c.Len() {
			want := false
			for i := j * factor; i < min((j+1)*factor, n); i++ {
				want = want || b.Test(i)
			}
			if c.Test(j) != want {
				rt.Fatalf("coarse block %d = %v, want %v", j, c.Test(j), want)
			}
		}
	})
}

func TestStoreOpenerMissingBuild(t *testing.T) {
	ctx := context.Background()
	st := openLocal(t)
	h := &Header{
		BlockSize: bs4k, Size: bs4k, BuildID: NewBuildID(),
		Builds:   []BuildRef{{ID: NewBuildID(), DataLen: dataFileLen(1, bs4k)}},
		Mappings: []Mapping{{Start: 0, Count: 1}},
	}
	h.Mappings[0].Build = h.Builds[0].ID
	if _, err := NewReader(h, StoreOpener(ctx, st)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("NewReader with a missing build: err = %v, want ErrNotFound", err)
	}
}

const bs4k = 4096

func TestPrefetchOrder(t *testing.T) {
	const bs = 4096
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	m := &Manager{Store: openLocal(t), TempDir: dir}
	data := make([]byte, 10*bs)
	copy(data[5*bs:], "x")
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, data, bs, func(int64) bool { return true })
	order := OffsetsToBlocks([]int64{5*bs + 17, 2 * bs, 5 * bs, 9*bs + 1}, bs)
	if want := []int64{5, 2, 9}; !slices.Equal(order, want) {
		t.Fatalf("OffsetsToBlocks = %v, want %v", order, want)
	}
	if _, err := m.Pause(ctx, "p", raw, PauseOptions{PrefetchOrder: order}); err != nil {
		t.Fatal(err)
	}
	// A re-pause without a new order inherits the parent's (and merges).
	h, err := m.Pause(ctx, "p", raw, PauseOptions{Parent: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.PrefetchOrder, order) {
		t.Fatalf("inherited prefetch order = %v, want %v", h.PrefetchOrder, order)
	}
	r, err := m.Open(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, want := r.PrefetchOrder(), []int64{5 * bs, 2 * bs, 9 * bs}; !slices.Equal(got, want) {
		t.Fatalf("PrefetchOrder() = %v, want byte offsets %v", got, want)
	}
	if got := r.PrefetchBlocks(); !slices.Equal(got, order) {
		t.Fatalf("PrefetchBlocks() = %v, want %v", got, order)
	}
}
