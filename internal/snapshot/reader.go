package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// OpenFunc opens the data file of one build.
type OpenFunc func(id BuildID) (store.Blob, error)

// Reader gives random access to an image's content: for every block either
// "zero" or its bytes, read from whichever build of the chain holds it and
// verified against the data file's checksum. It is safe for concurrent use.
// This is the type the userfaultfd page server and restores read from.
type Reader struct {
	h     *Header
	files map[BuildID]*dataFile
}

// NewReader opens every build h references through open and verifies their
// footers and checksum tables.
func NewReader(h *Header, open OpenFunc) (*Reader, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	r := &Reader{h: h, files: make(map[BuildID]*dataFile, len(h.Builds))}
	for _, ref := range h.Builds {
		blob, err := open(ref.ID)
		if err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("snapshot: open build %s: %w", ref.ID, err)
		}
		df, err := openDataFile(blob, h.BlockSize, ref.DataLen)
		if err != nil {
			_ = blob.Close()
			_ = r.Close()
			return nil, fmt.Errorf("snapshot: build %s: %w", ref.ID, err)
		}
		r.files[ref.ID] = df
	}
	return r, nil
}

// StoreOpener returns an OpenFunc reading builds from st. The blobs use ctx.
func StoreOpener(ctx context.Context, st store.Store) OpenFunc {
	return func(id BuildID) (store.Blob, error) { return st.OpenData(ctx, id.String()) }
}

// ReadHeader fetches and parses the header called name from st.
func ReadHeader(ctx context.Context, st store.Store, name string) (*Header, error) {
	b, err := st.GetHeader(ctx, name)
	if err != nil {
		return nil, err
	}
	h, err := ParseHeader(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot: header %s: %w", name, err)
	}
	return h, nil
}

// OpenReader opens the snapshot called name in st.
func OpenReader(ctx context.Context, st store.Store, name string) (*Reader, error) {
	h, err := ReadHeader(ctx, st, name)
	if err != nil {
		return nil, err
	}
	return NewReader(h, StoreOpener(ctx, st))
}

// Close releases the data files.
func (r *Reader) Close() error {
	var errs []error
	for _, f := range r.files {
		errs = append(errs, f.blob.Close())
	}
	return errors.Join(errs...)
}

// Header returns the image's header. Callers must not modify it.
func (r *Reader) Header() *Header { return r.h }

// BlockSize returns the block size in bytes.
func (r *Reader) BlockSize() int64 { return r.h.BlockSize }

// Size returns the image size in bytes.
func (r *Reader) Size() int64 { return r.h.Size }

// PrefetchOrder returns the recorded access order as byte offsets of
// blocks (nil when none was recorded), the form the userfaultfd page server
// takes. The header stores block indices; see PrefetchBlocks.
func (r *Reader) PrefetchOrder() []int64 {
	if r.h.PrefetchOrder == nil {
		return nil
	}
	out := make([]int64, len(r.h.PrefetchOrder))
	for i, b := range r.h.PrefetchOrder {
		out[i] = b * r.h.BlockSize
	}
	return out
}

// PrefetchBlocks returns the recorded access order as block indices.
func (r *Reader) PrefetchBlocks() []int64 { return r.h.PrefetchOrder }

// OffsetsToBlocks converts an access order of byte offsets (as the page
// server records it) into the block indices Options.PrefetchOrder takes,
// keeping the first occurrence of each block and dropping negative offsets.
func OffsetsToBlocks(offsets []int64, blockSize int64) []int64 {
	seen := make(map[int64]bool, len(offsets))
	out := make([]int64, 0, len(offsets))
	for _, off := range offsets {
		if off < 0 {
			continue
		}
		b := off / blockSize
		if !seen[b] {
			seen[b] = true
			out = append(out, b)
		}
	}
	return out
}

// Metadata returns the header's metadata.
func (r *Reader) Metadata() map[string]string { return r.h.Metadata }

// IsZero reports whether the block containing byte offset off reads as
// zeros without being stored. Offsets outside the image report false.
func (r *Reader) IsZero(off int64) bool {
	if off < 0 {
		return false
	}
	m, ok := r.h.Lookup(off / r.h.BlockSize)
	return ok && m.Zero
}

// ReadBlock reads block blk into p, which must be BlockSize bytes. For a
// zero block it reports zero=true and leaves p untouched, so a page server
// can answer with UFFDIO_ZEROPAGE. The part of a partial last block past
// Size reads as zeros.
func (r *Reader) ReadBlock(blk int64, p []byte) (zero bool, err error) {
	if int64(len(p)) != r.h.BlockSize {
		return false, fmt.Errorf("snapshot: ReadBlock buffer of %d bytes, want %d", len(p), r.h.BlockSize)
	}
	m, ok := r.h.Lookup(blk)
	if !ok {
		return false, fmt.Errorf("snapshot: block %d outside the image's %d blocks", blk, r.h.Blocks())
	}
	if m.Zero {
		return true, nil
	}
	if err := r.files[m.Build].readBlocks(p, m.DataBlock+blk-m.Start, 1); err != nil {
		return false, err
	}
	return false, nil
}

// ReadAt implements io.ReaderAt over the image's content.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("snapshot: negative offset %d", off)
	}
	if off >= r.h.Size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > r.h.Size-off {
		p = p[:r.h.Size-off]
	}
	bs := r.h.BlockSize
	var blockBuf []byte
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		blk := pos / bs
		m, _ := r.h.Lookup(blk)
		// Read as much of this mapping as p needs in one go.
		runEnd := min(m.End()*bs, off+int64(len(p)))
		if m.Zero {
			clear(p[n : n+int(runEnd-pos)])
			n += int(runEnd - pos)
			continue
		}
		df := r.files[m.Build]
		first := blk
		last := (runEnd - 1) / bs
		if pos%bs == 0 && runEnd%bs == 0 {
			// Aligned: read straight into p.
			if err := df.readBlocks(p[n:n+int(runEnd-pos)], m.DataBlock+first-m.Start, last-first+1); err != nil {
				return n, err
			}
			n += int(runEnd - pos)
			continue
		}
		if blockBuf == nil {
			blockBuf = make([]byte, bs)
		}
		if err := df.readBlocks(blockBuf, m.DataBlock+blk-m.Start, 1); err != nil {
			return n, err
		}
		end := min((blk+1)*bs, runEnd)
		n += copy(p[n:n+int(end-pos)], blockBuf[pos-blk*bs:])
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// Range is a run of bytes that is either all zero or all stored.
type Range struct {
	Off, Len int64
	Zero     bool
}

// Ranges yields the image's content as maximal zero and stored byte runs.
func (r *Reader) Ranges() iter.Seq[Range] {
	return func(yield func(Range) bool) {
		var cur Range
		have := false
		for _, m := range r.h.Mappings {
			off := m.Start * r.h.BlockSize
			l := min(m.Count*r.h.BlockSize, r.h.Size-off)
			if have && cur.Zero == m.Zero && cur.Off+cur.Len == off {
				cur.Len += l
				continue
			}
			if have && !yield(cur) {
				return
			}
			cur, have = Range{Off: off, Len: l, Zero: m.Zero}, true
		}
		if have {
			yield(cur)
		}
	}
}

// WriteFile materialises the image into a new sparse file at path: zero
// runs become holes, stored runs are written. The file is fsynced.
func (r *Reader) WriteFile(ctx context.Context, path string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("snapshot: restore: %w", cerr)
		}
	}()
	if err := f.Truncate(r.h.Size); err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	buf := make([]byte, max(scanChunk, r.h.BlockSize))
	for rg := range r.Ranges() {
		if rg.Zero {
			continue
		}
		for done := int64(0); done < rg.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := buf[:min(int64(len(buf)), rg.Len-done)]
			if _, err := r.ReadAt(p, rg.Off+done); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("snapshot: restore: %w", err)
			}
			if _, err := f.WriteAt(p, rg.Off+done); err != nil {
				return fmt.Errorf("snapshot: restore: %w", err)
			}
			done += int64(len(p))
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("snapshot: restore: %w", err)
	}
	return nil
}
