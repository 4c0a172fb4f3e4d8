package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Options control how a raw file is processed into an image.
type Options struct {
	// BlockSize is DefaultBlockSize (0 means that) or HugeBlockSize, or any
	// power of two between them. With a parent it must match the parent's.
	BlockSize int64
	// TempDir is where the data file is written; "" means os.TempDir().
	TempDir string
	// Metadata is copied into the header (e.g. the template id).
	Metadata map[string]string
	// PrefetchOrder is copied into the header: block indices in recorded
	// access order.
	PrefetchOrder []int64
}

func (o Options) blockSize() int64 {
	if o.BlockSize == 0 {
		return DefaultBlockSize
	}
	return o.BlockSize
}

// Image is a processed but not yet published image: a header and the local
// data file of the blocks its own build stores.
type Image struct {
	Header *Header
	// DataPath is the local data file of Header.BuildID; "" when this
	// generation stored no block.
	DataPath string
	// DataLen is the length of the data file.
	DataLen int64
}

// Remove deletes the image's local data file.
func (img *Image) Remove() error {
	if img.DataPath == "" {
		return nil
	}
	if err := os.Remove(img.DataPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot: remove data file: %w", err)
	}
	return nil
}

// Bitmap is a dirty-block bitmap: bit i set means block i may have changed
// since the parent image was taken. Its layout (bit i of word i/64) is the
// layout KVM and Firecracker use for dirty page logs.
type Bitmap struct {
	words []uint64
	n     int64
}

// NewBitmap returns an empty bitmap for n blocks.
func NewBitmap(n int64) *Bitmap { return &Bitmap{words: make([]uint64, (n+63)/64), n: n} }

// BitmapFromWords wraps a dirty log of n blocks in KVM layout.
func BitmapFromWords(words []uint64, n int64) (*Bitmap, error) {
	if int64(len(words)) < (n+63)/64 {
		return nil, fmt.Errorf("snapshot: bitmap of %d words cannot hold %d blocks", len(words), n)
	}
	return &Bitmap{words: words, n: n}, nil
}

// Set marks block i dirty.
func (b *Bitmap) Set(i int64) { b.words[i/64] |= 1 << (uint64(i) % 64) }

// Test reports whether block i is dirty; blocks past the end are dirty.
func (b *Bitmap) Test(i int64) bool {
	if i < 0 || i >= b.n {
		return true
	}
	return b.words[i/64]&(1<<(uint64(i)%64)) != 0
}

// Coarsen returns the bitmap for blocks of factor times the size: a block
// is dirty when any of its sub-blocks is. It turns a 4 KiB page dirty log
// into one for 2 MiB blocks (factor 512).
func (b *Bitmap) Coarsen(factor int64) *Bitmap {
	out := NewBitmap((b.n + factor - 1) / factor)
	for i := int64(0); i < b.n; {
		end := b.nextRun(i, b.n)
		if b.Test(i) {
			for j := i / factor; j <= (end-1)/factor; j++ {
				out.Set(j)
			}
		}
		i = end
	}
	return out
}

// Len returns the number of blocks the bitmap covers.
func (b *Bitmap) Len() int64 { return b.n }

// nextRun returns the end of the run of blocks starting at i that share
// block i's dirty state, capped at limit.
func (b *Bitmap) nextRun(i, limit int64) int64 {
	want := b.Test(i)
	for i < limit {
		if i >= b.n {
			if want {
				return limit // past the bitmap every block is dirty
			}
			return i
		}
		sh := uint64(i) % 64
		w := b.words[i/64]
		if !want {
			w = ^w
		}
		w >>= sh
		ones := int64(bits.TrailingZeros64(^w))
		if ones < int64(64-sh) {
			i += ones
			if i >= b.n {
				if want {
					return limit
				}
				i = b.n
			}
			return min(i, limit)
		}
		i += int64(64 - sh)
		if !want && i > b.n {
			i = b.n
		}
	}
	return limit
}

var zeroBlock = make([]byte, MaxBlockSize)

// isZero reports whether p is all zeros. bytes.Equal against a zero block
// compiles to the runtime's vectorised memequal and measured fastest
// (BenchmarkIsZero).
func isZero(p []byte) bool { return bytes.Equal(p, zeroBlock[:len(p)]) }

// builder accumulates a header's block map, coalescing adjacent ranges.
type builder struct {
	bs       int64
	own      BuildID
	mappings []Mapping
	data     *dataWriter
	file     *os.File
	// unsorted: blocks arrive in any order (a streamed CRIU dump); the
	// mappings are sorted, coalesced and their gaps mapped to zero by
	// sortMappings before finish.
	unsorted bool
}

func (b *builder) add(m Mapping) {
	if b.unsorted {
		b.mappings = append(b.mappings, m)
		return
	}
	if n := len(b.mappings); n > 0 {
		last := &b.mappings[n-1]
		if last.Zero && m.Zero {
			last.Count += m.Count
			return
		}
		if !last.Zero && !m.Zero && last.Build == m.Build && last.DataBlock+last.Count == m.DataBlock {
			last.Count += m.Count
			return
		}
	}
	b.mappings = append(b.mappings, m)
}

func (b *builder) zero(start, count int64) {
	if count > 0 {
		b.add(Mapping{Start: start, Count: count, Zero: true})
	}
}

func (b *builder) store(blk int64, p []byte) error {
	i, err := b.data.writeBlock(p)
	if err != nil {
		return err
	}
	b.add(Mapping{Start: blk, Count: 1, Build: b.own, DataBlock: i})
	return nil
}

// sortMappings orders an unsorted builder's mappings, coalesces them and
// maps every block of [0, nblocks) no mapping covers to zero. Two
// mappings of one block are an error.
func (b *builder) sortMappings(nblocks int64) error {
	ms := b.mappings
	slices.SortFunc(ms, func(x, y Mapping) int { return cmp.Compare(x.Start, y.Start) })
	b.mappings, b.unsorted = make([]Mapping, 0, len(ms)), false
	var cursor int64
	for _, m := range ms {
		if m.Start < cursor {
			return fmt.Errorf("snapshot: block %d mapped twice", m.Start)
		}
		b.zero(cursor, m.Start-cursor)
		b.add(m)
		cursor = m.End()
	}
	if cursor > nblocks {
		return fmt.Errorf("snapshot: block %d past the image's %d blocks", cursor-1, nblocks)
	}
	b.zero(cursor, nblocks-cursor)
	return nil
}

// storeRun stores the blocks of p (whole blocks, none of them zero) at
// blk, blk+1, … with one write.
func (b *builder) storeRun(blk int64, p []byte) error {
	i, err := b.data.writeBlocks(p)
	if err != nil {
		return err
	}
	b.add(Mapping{Start: blk, Count: int64(len(p)) / b.bs, Build: b.own, DataBlock: i})
	return nil
}

func newBuilder(bs int64, tempDir string) (*builder, error) {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	f, err := os.CreateTemp(tempDir, "wrenn-snapshot-*.data")
	if err != nil {
		return nil, fmt.Errorf("snapshot: create data file: %w", err)
	}
	d := newDataWriter(f, bs)
	d.file = f
	return &builder{bs: bs, own: NewBuildID(), data: d, file: f}, nil
}

func (b *builder) abort() {
	_ = b.file.Close()
	_ = os.Remove(b.file.Name())
}

// finish completes the data file and returns the image. refs supplies the
// data lengths of builds other than the builder's own.
func (b *builder) finish(h *Header, refs map[BuildID]int64) (*Image, error) {
	n, err := b.data.finish()
	if err == nil {
		err = b.file.Sync()
	}
	if cerr := b.file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(b.file.Name())
		return nil, fmt.Errorf("snapshot: finish data file: %w", err)
	}
	img := &Image{Header: h, DataPath: b.file.Name(), DataLen: n}
	h.BuildID = b.own
	h.Mappings = b.mappings
	if h.Mappings == nil {
		h.Mappings = []Mapping{}
	}
	used := map[BuildID]bool{}
	for _, m := range h.Mappings {
		if !m.Zero {
			used[m.Build] = true
		}
	}
	h.Builds = h.Builds[:0]
	for id := range used {
		l := refs[id]
		if id == b.own {
			l = n
		}
		h.Builds = append(h.Builds, BuildRef{ID: id, DataLen: l})
	}
	sortBuilds(h.Builds)
	if !used[b.own] {
		_ = os.Remove(img.DataPath)
		img.DataPath, img.DataLen = "", 0
	}
	if err := h.Validate(); err != nil {
		_ = img.Remove()
		return nil, fmt.Errorf("snapshot: built an invalid header: %w", err)
	}
	return img, nil
}

func sortBuilds(b []BuildRef) {
	for i := 1; i < len(b); i++ {
		for j := i; j > 0 && bytes.Compare(b[j-1].ID[:], b[j].ID[:]) > 0; j-- {
			b[j-1], b[j] = b[j], b[j-1]
		}
	}
}

// sink receives the blocks of a raw file scan: runs of blocks known to be
// zero (holes), and blocks read from data extents (possibly zero).
type sink interface {
	zeros(start, count int64)
	data(blk int64, p []byte) error
}

// scanChunk is how much of a data extent one read covers.
const scanChunk = 4 << 20

func scanBuffer(bs int64) []byte { return make([]byte, max(scanChunk, bs)) }

// scan reads blocks [from, to) of f (of size bytes) and hands them to s. It
// skips holes with SEEK_DATA/SEEK_HOLE, so a sparse file costs time in
// proportion to its data, not its size.
func scan(ctx context.Context, f *os.File, size, bs, from, to int64, s sink, buf []byte) error {
	fd := int(f.Fd())
	blk := from
	for blk < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		off := blk * bs
		dataOff, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			dataOff = size // no data past off
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
			dataOff = off // no hole support: treat everything as data
		case err != nil:
			return fmt.Errorf("snapshot: SEEK_DATA: %w", err)
		}
		dataBlk := min(dataOff/bs, to)
		s.zeros(blk, dataBlk-blk)
		blk = dataBlk
		if blk >= to {
			break
		}
		holeOff, err := unix.Seek(fd, blk*bs, unix.SEEK_HOLE)
		if err != nil {
			holeOff = size
		}
		endBlk := min(blocksFor(holeOff, bs), to)
		if endBlk <= blk {
			endBlk = blk + 1
		}
		for blk < endBlk {
			n := min(int64(len(buf))/bs, endBlk-blk)
			p := buf[:n*bs]
			got, err := f.ReadAt(p, blk*bs)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("snapshot: read raw file: %w", err)
			}
			clear(p[got:]) // the partial last block reads as zero-padded
			for k := range n {
				if err := s.data(blk+k, p[k*bs:(k+1)*bs]); err != nil {
					return err
				}
			}
			blk += n
		}
	}
	return nil
}

// fullSink stores every non-zero block.
type fullSink struct{ b *builder }

func (s fullSink) zeros(start, count int64) { s.b.zero(start, count) }

func (s fullSink) data(blk int64, p []byte) error {
	if isZero(p) {
		s.b.zero(blk, 1)
		return nil
	}
	return s.b.store(blk, p)
}

func openRaw(path string, bs int64) (*os.File, int64, error) {
	if bs < MinBlockSize || bs > MaxBlockSize || bits.OnesCount64(uint64(bs)) != 1 {
		return nil, 0, fmt.Errorf("snapshot: block size %d: want a power of two in [%d, %d]", bs, MinBlockSize, MaxBlockSize)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("snapshot: open raw file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, 0, fmt.Errorf("snapshot: stat raw file: %w", err)
	}
	if st.Size() > maxImageSize {
		_ = f.Close()
		return nil, 0, fmt.Errorf("snapshot: raw file of %d bytes is too large", st.Size())
	}
	return f, st.Size(), nil
}

// ProcessFile turns any raw image file (a memory file or a disk image,
// possibly sparse) into a self-contained generation-0 image: a data file of
// its non-zero blocks and a header mapping every zero block to "zero".
func ProcessFile(ctx context.Context, path string, opts Options) (*Image, error) {
	bs := opts.blockSize()
	f, size, err := openRaw(path, bs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := newBuilder(bs, opts.TempDir)
	if err != nil {
		return nil, err
	}
	if err := scan(ctx, f, size, bs, 0, blocksFor(size, bs), fullSink{b}, scanBuffer(bs)); err != nil {
		b.abort()
		return nil, err
	}
	h := &Header{
		BlockSize:     bs,
		Size:          size,
		PrefetchOrder: opts.PrefetchOrder,
		Metadata:      opts.Metadata,
	}
	return b.finish(h, nil)
}

// ProcessMemfile processes a memory file as a VMM writes it. It is
// ProcessFile; the name matches the pause flow it serves.
func ProcessMemfile(ctx context.Context, path string, opts Options) (*Image, error) {
	return ProcessFile(ctx, path, opts)
}

// diffSink stores a block only when it differs from the parent's.
type diffSink struct {
	b      *builder
	parent *Reader
	buf    []byte
}

func (s *diffSink) zeros(start, count int64) { s.b.zero(start, count) }

func (s *diffSink) data(blk int64, p []byte) error {
	if isZero(p) {
		s.b.zero(blk, 1)
		return nil
	}
	m, ok := s.parent.h.Lookup(blk)
	if !ok || m.Zero {
		// Beyond the parent or zero there: nothing to share. (A partial last
		// block compares correctly: both sides are zero-padded.)
		return s.b.store(blk, p)
	}
	dataBlk := m.DataBlock + (blk - m.Start)
	df := s.parent.files[m.Build]
	if dataBlk >= 0 && dataBlk < df.n && crcOf(p) != df.crcs[dataBlk] {
		// The parent's stored checksum differs: changed, no read needed.
		// Equal checksums are confirmed byte for byte below.
		return s.b.store(blk, p)
	}
	if err := df.readBlocks(s.buf, dataBlk, 1); err != nil {
		return fmt.Errorf("snapshot: read parent block %d: %w", blk, err)
	}
	if bytes.Equal(s.buf, p) {
		s.b.add(Mapping{Start: blk, Count: 1, Build: m.Build, DataBlock: dataBlk})
		return nil
	}
	return s.b.store(blk, p)
}

// ProcessMemfileWithParent processes a raw file taken after parent: blocks
// equal to the parent's map to the parent's data (its build and offset),
// zero blocks map to zero, and only changed non-zero blocks are stored. The
// result has generation parent+1 and base build parent's build.
//
// With a dirty bitmap only the blocks it marks are read and compared; every
// other block keeps the parent's mapping, whatever the raw file holds there
// (Firecracker's diff snapshots leave clean pages as holes). Without one the
// raw file must be a full image: every non-zero block is compared with the
// parent's content and holes read as zero. Works for disk images as well as
// memory files. Metadata and prefetch order not set in opts are inherited
// from the parent, so a template id survives re-pauses.
func ProcessMemfileWithParent(ctx context.Context, path string, parent *Reader, dirty *Bitmap, opts Options) (*Image, error) {
	ph := parent.Header()
	bs := ph.BlockSize
	if opts.BlockSize != 0 && opts.BlockSize != bs {
		return nil, fmt.Errorf("snapshot: block size %d differs from the parent's %d", opts.BlockSize, bs)
	}
	f, size, err := openRaw(path, bs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := newBuilder(bs, opts.TempDir)
	if err != nil {
		return nil, err
	}
	ds := &diffSink{b: b, parent: parent, buf: make([]byte, bs)}
	nblocks := blocksFor(size, bs)
	if dirty == nil {
		err = scan(ctx, f, size, bs, 0, nblocks, ds, scanBuffer(bs))
	} else {
		err = scanDirty(ctx, f, size, bs, nblocks, dirty, ph, ds)
	}
	if err != nil {
		b.abort()
		return nil, err
	}
	h := &Header{
		BlockSize:     bs,
		Size:          size,
		Generation:    ph.Generation + 1,
		BaseBuildID:   ph.BuildID,
		PrefetchOrder: opts.PrefetchOrder,
		Metadata:      opts.Metadata,
	}
	if h.Metadata == nil {
		h.Metadata = ph.Metadata
	}
	if h.PrefetchOrder == nil {
		for _, blk := range ph.PrefetchOrder {
			if blk < nblocks {
				h.PrefetchOrder = append(h.PrefetchOrder, blk)
			}
		}
	}
	refs := make(map[BuildID]int64, len(ph.Builds))
	for _, r := range ph.Builds {
		refs[r.ID] = r.DataLen
	}
	return b.finish(h, refs)
}

// scanDirty copies the parent's mappings for clean runs and scans dirty runs.
func scanDirty(ctx context.Context, f *os.File, size, bs, nblocks int64, dirty *Bitmap, ph *Header, ds *diffSink) error {
	// When the size changed, blocks the parent does not fully cover count as
	// dirty.
	shared := min(ph.Size/bs, nblocks)
	if size == ph.Size {
		shared = nblocks
	}
	buf := scanBuffer(bs)
	blk := int64(0)
	for blk < nblocks {
		end := dirty.nextRun(blk, nblocks)
		isDirty := dirty.Test(blk)
		if blk >= shared {
			end, isDirty = nblocks, true
		} else if !isDirty {
			end = min(end, shared)
		}
		if isDirty {
			if err := scan(ctx, f, size, bs, blk, end, ds, buf); err != nil {
				return err
			}
		} else {
			copyMappings(ds.b, ph, blk, end)
		}
		blk = end
	}
	return nil
}

// copyMappings adds the parent's mappings clipped to blocks [from, to).
func copyMappings(b *builder, ph *Header, from, to int64) {
	for i := ph.lookupIndex(from); i >= 0 && i < len(ph.Mappings) && ph.Mappings[i].Start < to; i++ {
		m := ph.Mappings[i]
		s, e := max(m.Start, from), min(m.End(), to)
		c := Mapping{Start: s, Count: e - s, Zero: m.Zero}
		if !m.Zero {
			c.Build, c.DataBlock = m.Build, m.DataBlock+(s-m.Start)
		}
		b.add(c)
	}
}

// Merge collapses the chain r reads into one self-contained image with a
// new build: every non-zero block is copied into its data file. Generation,
// size, metadata and prefetch order are kept; the base build becomes none.
func Merge(ctx context.Context, r *Reader, opts Options) (*Image, error) {
	h := r.Header()
	b, err := newBuilder(h.BlockSize, opts.TempDir)
	if err != nil {
		return nil, err
	}
	const batch = 1024
	buf := make([]byte, min(batch, max(1, scanChunk/h.BlockSize))*h.BlockSize)
	for _, m := range h.Mappings {
		if m.Zero {
			b.zero(m.Start, m.Count)
			continue
		}
		for done := int64(0); done < m.Count; {
			if err := ctx.Err(); err != nil {
				b.abort()
				return nil, err
			}
			n := min(int64(len(buf))/h.BlockSize, m.Count-done)
			p := buf[:n*h.BlockSize]
			if err := r.files[m.Build].readBlocks(p, m.DataBlock+done, n); err != nil {
				b.abort()
				return nil, fmt.Errorf("snapshot: merge: %w", err)
			}
			for k := range n {
				if err := b.store(m.Start+done+k, p[k*h.BlockSize:(k+1)*h.BlockSize]); err != nil {
					b.abort()
					return nil, err
				}
			}
			done += n
		}
	}
	out := &Header{
		BlockSize:     h.BlockSize,
		Size:          h.Size,
		Generation:    h.Generation,
		PrefetchOrder: h.PrefetchOrder,
		Metadata:      h.Metadata,
	}
	if opts.Metadata != nil {
		out.Metadata = opts.Metadata
	}
	if opts.PrefetchOrder != nil {
		out.PrefetchOrder = opts.PrefetchOrder
	}
	return b.finish(out, nil)
}
