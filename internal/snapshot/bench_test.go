package snapshot

import (
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// benchImageSize is the memfile size: 4 GiB, 512 MiB under -short.
func benchImageSize() int64 {
	if testing.Short() {
		return 512 << 20
	}
	return 4 << 30
}

// makeSparseMemfile writes a sparse file of size bytes in which a random
// tenth of the 4 KiB pages hold random non-zero data. It returns the pages.
func makeSparseMemfile(b *testing.B, path string, size int64, rng *rand.Rand) []int64 {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	pages := size / 4096
	chosen := rng.Perm(int(pages))[:pages/10]
	page := make([]byte, 4096)
	out := make([]int64, len(chosen))
	for i, p := range chosen {
		fillRandom(rng, page)
		if _, err := f.WriteAt(page, int64(p)*4096); err != nil {
			b.Fatal(err)
		}
		out[i] = int64(p)
	}
	return out
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64()|1)
	}
}

// fullRead is the baseline: reading the whole raw file the naive way.
func fullRead(b *testing.B, path string) time.Duration {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if _, err := io.CopyBuffer(io.Discard, f, make([]byte, 4<<20)); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func imageBytes(b *testing.B, img *Image) int64 {
	b.Helper()
	hdr, err := img.Header.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	return img.DataLen + int64(len(hdr))
}

// BenchmarkProcessMemfile: 4 GiB sparse memfile, 10 % of pages non-zero at
// random places. Reports seconds, throughput, the stored/non-zero ratio
// (header and checksums included; must be ≤ 1.01) and the time relative to
// plainly reading the whole file in the same run.
func BenchmarkProcessMemfile(b *testing.B) {
	dir := b.TempDir()
	raw := filepath.Join(dir, "mem.raw")
	size := benchImageSize()
	pages := makeSparseMemfile(b, raw, size, rand.New(rand.NewPCG(1, 1)))
	nonZero := int64(len(pages)) * 4096
	baseline := fullRead(b, raw)
	ctx := context.Background()
	var stored int64
	var took time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		img, err := ProcessMemfile(ctx, raw, Options{TempDir: dir})
		took += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		stored = imageBytes(b, img)
		_ = img.Remove()
	}
	sec := took.Seconds() / float64(b.N)
	b.ReportMetric(sec, "seconds")
	b.ReportMetric(float64(size)/1e6/sec, "image_MB/s")
	b.ReportMetric(float64(nonZero)/1e6/sec, "data_MB/s")
	b.ReportMetric(float64(stored)/float64(nonZero), "stored/nonzero")
	b.ReportMetric(sec/baseline.Seconds(), "time/full_read")
	if r := float64(stored) / float64(nonZero); r > 1.01 {
		b.Fatalf("stored/nonzero = %.4f, want ≤ 1.01", r)
	}
}

// BenchmarkRepause: after a full snapshot, touch 1 % of the pages and
// re-process against the parent, with and without a dirty bitmap. Reports
// the diff size over the touched data (≤ 1.05) and the time relative to a
// full ProcessMemfile of the same file in the same run.
func BenchmarkRepause(b *testing.B) {
	for _, withBitmap := range []bool{true, false} {
		name := "no_bitmap"
		if withBitmap {
			name = "bitmap"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			ctx := context.Background()
			raw := filepath.Join(dir, "mem.raw")
			size := benchImageSize()
			rng := rand.New(rand.NewPCG(2, 2))
			makeSparseMemfile(b, raw, size, rng)
			st, err := store.OpenLocal(filepath.Join(dir, "store"))
			if err != nil {
				b.Fatal(err)
			}
			m := &Manager{Store: st, TempDir: dir}
			if _, err := m.Pause(ctx, "cap", raw, PauseOptions{}); err != nil {
				b.Fatal(err)
			}
			// Touch 1 % of pages with new data.
			npages := size / 4096
			touched := rng.Perm(int(npages))[:npages/100]
			f, err := os.OpenFile(raw, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			bm := NewBitmap(npages)
			page := make([]byte, 4096)
			for _, p := range touched {
				fillRandom(rng, page)
				if _, err := f.WriteAt(page, int64(p)*4096); err != nil {
					b.Fatal(err)
				}
				bm.Set(int64(p))
			}
			_ = f.Close()
			if !withBitmap {
				bm = nil
			}
			parent, err := m.Open(ctx, "cap")
			if err != nil {
				b.Fatal(err)
			}
			defer parent.Close()
			full := time.Now()
			fimg, err := ProcessMemfile(ctx, raw, Options{TempDir: dir})
			if err != nil {
				b.Fatal(err)
			}
			baseline := time.Since(full)
			_ = fimg.Remove()

			touchedBytes := int64(len(touched)) * 4096
			var diff int64
			var took time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				img, err := ProcessMemfileWithParent(ctx, raw, parent, bm, Options{TempDir: dir})
				took += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if got := img.Header.Counts().Stored; got != int64(len(touched)) {
					b.Fatalf("diff stored %d blocks, touched %d", got, len(touched))
				}
				diff = imageBytes(b, img)
				_ = img.Remove()
			}
			sec := took.Seconds() / float64(b.N)
			b.ReportMetric(sec, "seconds")
			b.ReportMetric(float64(diff)/float64(touchedBytes), "diff/touched")
			b.ReportMetric(sec/baseline.Seconds(), "time/full_process")
			if r := float64(diff) / float64(touchedBytes); r > 1.05 {
				b.Fatalf("diff/touched = %.4f, want ≤ 1.05", r)
			}
		})
	}
}

// isZeroWords is the alternative zero test: 8 bytes at a time.
func isZeroWords(p []byte) bool {
	for i := 0; i+8 <= len(p); i += 8 {
		if binary.LittleEndian.Uint64(p[i:]) != 0 {
			return false
		}
	}
	for _, c := range p[len(p)&^7:] {
		if c != 0 {
			return false
		}
	}
	return true
}

// isZeroOr ORs 64 bytes per step without early exit inside the step.
func isZeroOr(p []byte) bool {
	for i := 0; i+64 <= len(p); i += 64 {
		q := p[i : i+64 : i+64]
		v := binary.LittleEndian.Uint64(q[0:]) | binary.LittleEndian.Uint64(q[8:]) |
			binary.LittleEndian.Uint64(q[16:]) | binary.LittleEndian.Uint64(q[24:]) |
			binary.LittleEndian.Uint64(q[32:]) | binary.LittleEndian.Uint64(q[40:]) |
			binary.LittleEndian.Uint64(q[48:]) | binary.LittleEndian.Uint64(q[56:])
		if v != 0 {
			return false
		}
	}
	return isZeroWords(p[len(p)&^63:])
}

// BenchmarkIsZero compares zero tests on all-zero 4 KiB blocks (the worst
// case: nothing exits early). The chosen isZero is the bytes.Equal one;
// the others are reported as ratios against it.
func BenchmarkIsZero(b *testing.B) {
	buf := make([]byte, 64<<20)
	for i := range buf { // fault the pages in before timing anything
		buf[i] = 1
	}
	clear(buf)
	measure := func(f func([]byte) bool) time.Duration {
		start := time.Now()
		for off := 0; off < len(buf); off += 4096 {
			if !f(buf[off : off+4096]) {
				b.Fatal("non-zero")
			}
		}
		return time.Since(start)
	}
	var tEq, tWords, tOr time.Duration
	for i := range b.N {
		// Rotate the order so none of them always runs first.
		fs := []func(){
			func() { tEq += measure(isZero) },
			func() { tWords += measure(isZeroWords) },
			func() { tOr += measure(isZeroOr) },
		}
		for k := range fs {
			fs[(i+k)%len(fs)]()
		}
	}
	b.ReportMetric(float64(len(buf))*float64(b.N)/1e9/tEq.Seconds(), "bytes.Equal_GB/s")
	b.ReportMetric(tWords.Seconds()/tEq.Seconds(), "words_time/bytes.Equal")
	b.ReportMetric(tOr.Seconds()/tEq.Seconds(), "or64_time/bytes.Equal")
}
