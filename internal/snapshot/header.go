package snapshot

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"slices"
	"sort"
)

// Format constants.
const (
	// HeaderVersion is the only header version this package reads and writes.
	HeaderVersion = 1
	// DefaultBlockSize is the default block size (one 4 KiB page).
	DefaultBlockSize = 4096
	// HugeBlockSize is the block size for images of 2 MiB huge pages.
	HugeBlockSize = 2 << 20
	// MinBlockSize and MaxBlockSize bound the (power of two) block size.
	MinBlockSize = DefaultBlockSize
	MaxBlockSize = HugeBlockSize

	// maxMetaLen bounds one metadata key or value.
	maxMetaLen = 64 << 10
	// maxImageSize bounds the image size (64 TiB) so block arithmetic never
	// overflows.
	maxImageSize = 1 << 46
)

var (
	headerMagic = [8]byte{'W', 'R', 'N', 'S', 'N', 'A', 'P', 0}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt is wrapped by every error that reports a malformed or damaged
// header or data file.
var ErrCorrupt = errors.New("snapshot: corrupt")

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// BuildID names one build: one data file holding stored blocks. The zero
// value means "none".
type BuildID [16]byte

// NewBuildID returns a fresh random build id.
func NewBuildID() BuildID {
	var id BuildID
	if _, err := rand.Read(id[:]); err != nil {
		panic(fmt.Sprintf("snapshot: crypto/rand failed: %v", err))
	}
	return id
}

// IsZero reports whether id is the "none" value.
func (id BuildID) IsZero() bool { return id == BuildID{} }

// String returns the id as 32 lowercase hex digits.
func (id BuildID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText implements encoding.TextMarshaler.
func (id BuildID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// ParseBuildID parses the 32-hex-digit form produced by String.
func ParseBuildID(s string) (BuildID, error) {
	var id BuildID
	if len(s) != 32 {
		return id, fmt.Errorf("snapshot: build id %q: want 32 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("snapshot: build id %q: %w", s, err)
	}
	if id.IsZero() {
		return id, fmt.Errorf("snapshot: build id %q: the zero id is reserved", s)
	}
	return id, nil
}

// BuildRef is one entry of a header's build table: a build whose data file
// the header references, with that file's exact length.
type BuildRef struct {
	ID      BuildID
	DataLen int64
}

// Mapping maps the block range [Start, Start+Count) to its content. When
// Zero is set the blocks read as zeros and nothing is stored; otherwise they
// are Count consecutive blocks starting at block DataBlock of build Build's
// data file.
type Mapping struct {
	Start     int64
	Count     int64
	Zero      bool
	Build     BuildID
	DataBlock int64
}

// End returns the first block after the range.
func (m Mapping) End() int64 { return m.Start + m.Count }

// Header describes one image: its geometry, lineage and where every block's
// data lives. Mappings cover [0, Blocks()) contiguously and in order.
type Header struct {
	BlockSize  int64
	Size       int64
	Generation uint64
	// BuildID is the build this header was produced with; its data file holds
	// the blocks this generation stored (it may hold none).
	BuildID BuildID
	// BaseBuildID is the build of the parent image a diff was taken against;
	// zero for a self-contained image.
	BaseBuildID BuildID
	// Builds lists every build referenced by Mappings (the chain), sorted by id.
	Builds []BuildRef
	// Mappings is the sorted, contiguous block map.
	Mappings []Mapping
	// PrefetchOrder optionally lists block indices in recorded access order.
	PrefetchOrder []int64
	// Metadata holds driver data such as the template id.
	Metadata map[string]string
}

// Blocks returns the number of blocks, the last one possibly partial.
func (h *Header) Blocks() int64 { return blocksFor(h.Size, h.BlockSize) }

func blocksFor(size, bs int64) int64 { return (size + bs - 1) / bs }

// Lookup returns the mapping containing block b using binary search. It
// reports false when b is out of range.
func (h *Header) Lookup(b int64) (Mapping, bool) {
	i := h.lookupIndex(b)
	if i < 0 {
		return Mapping{}, false
	}
	return h.Mappings[i], true
}

func (h *Header) lookupIndex(b int64) int {
	if b < 0 || b >= h.Blocks() {
		return -1
	}
	// First mapping whose End is past b.
	i := sort.Search(len(h.Mappings), func(i int) bool { return h.Mappings[i].End() > b })
	if i == len(h.Mappings) || h.Mappings[i].Start > b {
		return -1
	}
	return i
}

// Build returns the build table entry for id.
func (h *Header) Build(id BuildID) (BuildRef, bool) {
	i, ok := slices.BinarySearchFunc(h.Builds, id, func(r BuildRef, id BuildID) int {
		return bytes.Compare(r.ID[:], id[:])
	})
	if !ok {
		return BuildRef{}, false
	}
	return h.Builds[i], true
}

// Counts tallies blocks by where they live.
type Counts struct {
	Zero      int64 `json:"zero"`
	Stored    int64 `json:"stored"`    // stored in this header's own build
	Inherited int64 `json:"inherited"` // stored in an ancestor's build
}

// Counts returns how many blocks are zero, stored by this build and
// inherited from other builds.
func (h *Header) Counts() Counts {
	var c Counts
	for _, m := range h.Mappings {
		switch {
		case m.Zero:
			c.Zero += m.Count
		case m.Build == h.BuildID:
			c.Stored += m.Count
		default:
			c.Inherited += m.Count
		}
	}
	return c
}

// Validate checks every structural invariant the parser enforces.
func (h *Header) Validate() error {
	if h.BlockSize < MinBlockSize || h.BlockSize > MaxBlockSize || bits.OnesCount64(uint64(h.BlockSize)) != 1 {
		return corruptf("block size %d: want a power of two in [%d, %d]", h.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if h.Size < 0 || h.Size > maxImageSize {
		return corruptf("image size %d out of range", h.Size)
	}
	if h.BuildID.IsZero() {
		return corruptf("zero build id")
	}
	// A generation > 0 image may be self-contained after a merge, but a
	// generation 0 image has no parent to be based on.
	if !h.BaseBuildID.IsZero() && h.Generation == 0 {
		return corruptf("generation 0 image with a base build")
	}
	for i, b := range h.Builds {
		if b.ID.IsZero() {
			return corruptf("build table entry %d is the zero id", i)
		}
		if i > 0 && bytes.Compare(h.Builds[i-1].ID[:], b.ID[:]) >= 0 {
			return corruptf("build table not sorted or has duplicates at %d", i)
		}
		if b.DataLen < dataFooterLen {
			return corruptf("build %s data length %d too small", b.ID, b.DataLen)
		}
	}
	used := make([]bool, len(h.Builds))
	nblocks := h.Blocks()
	var next int64
	for i, m := range h.Mappings {
		if m.Start != next {
			return corruptf("mapping %d starts at block %d, want %d", i, m.Start, next)
		}
		if m.Count <= 0 || m.Count > nblocks-m.Start {
			return corruptf("mapping %d has bad length %d", i, m.Count)
		}
		if !m.Zero {
			j, ok := slices.BinarySearchFunc(h.Builds, m.Build, func(r BuildRef, id BuildID) int {
				return bytes.Compare(r.ID[:], id[:])
			})
			if !ok {
				return corruptf("mapping %d references build %s missing from the build table", i, m.Build)
			}
			used[j] = true
			capBlocks := dataBlocksFor(h.Builds[j].DataLen, h.BlockSize)
			if m.DataBlock < 0 || m.DataBlock > capBlocks || m.Count > capBlocks-m.DataBlock {
				return corruptf("mapping %d data blocks [%d,+%d) exceed build %s (%d blocks)", i, m.DataBlock, m.Count, m.Build, capBlocks)
			}
		} else if m.DataBlock != 0 || !m.Build.IsZero() {
			return corruptf("zero mapping %d carries a data location", i)
		}
		next = m.End()
	}
	if next != nblocks {
		return corruptf("mappings cover %d blocks, image has %d", next, nblocks)
	}
	for j, u := range used {
		if !u {
			return corruptf("build %s is in the table but unused", h.Builds[j].ID)
		}
	}
	for i, b := range h.PrefetchOrder {
		if b < 0 || b >= nblocks {
			return corruptf("prefetch entry %d: block %d out of range", i, b)
		}
	}
	for k, v := range h.Metadata {
		if len(k) == 0 || len(k) > maxMetaLen || len(v) > maxMetaLen {
			return corruptf("metadata entry %q has a bad length", k)
		}
	}
	return nil
}

// dataBlocksFor returns how many blocks a data file of length n holds.
func dataBlocksFor(n, bs int64) int64 {
	if n < dataFooterLen {
		return 0
	}
	return (n - dataFooterLen) / (bs + 4)
}

// Marshal encodes the header. Layout (little endian; see docs/SNAPSHOTS.md):
//
//	magic[8] version u32 blockShift u32 size u64 generation u64
//	buildID[16] baseBuildID[16]
//	nBuilds uvarint, then per build: id[16] dataLen uvarint
//	nMappings uvarint, then per mapping: count uvarint, kind uvarint
//	  (0 = zero, i+1 = build i), and for data mappings the zigzag delta of
//	  DataBlock against the end of the previous mapping of the same build
//	nPrefetch uvarint, then zigzag deltas of block indices
//	nMeta uvarint, then sorted (keyLen uvarint, key, valLen uvarint, val)
//	crc32c u32 over everything before it
func (h *Header) Marshal() ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("marshal header: %w", err)
	}
	buf := make([]byte, 0, 64+len(h.Builds)*24+len(h.Mappings)*6+len(h.PrefetchOrder)*3)
	buf = append(buf, headerMagic[:]...)
	buf = binary.LittleEndian.AppendUint32(buf, HeaderVersion)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(bits.TrailingZeros64(uint64(h.BlockSize))))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(h.Size))
	buf = binary.LittleEndian.AppendUint64(buf, h.Generation)
	buf = append(buf, h.BuildID[:]...)
	buf = append(buf, h.BaseBuildID[:]...)

	buf = binary.AppendUvarint(buf, uint64(len(h.Builds)))
	index := make(map[BuildID]int, len(h.Builds))
	for i, b := range h.Builds {
		buf = append(buf, b.ID[:]...)
		buf = binary.AppendUvarint(buf, uint64(b.DataLen))
		index[b.ID] = i
	}
	lastEnd := make([]int64, len(h.Builds))
	buf = binary.AppendUvarint(buf, uint64(len(h.Mappings)))
	for _, m := range h.Mappings {
		buf = binary.AppendUvarint(buf, uint64(m.Count))
		if m.Zero {
			buf = binary.AppendUvarint(buf, 0)
			continue
		}
		i := index[m.Build]
		buf = binary.AppendUvarint(buf, uint64(i)+1)
		buf = binary.AppendVarint(buf, m.DataBlock-lastEnd[i])
		lastEnd[i] = m.DataBlock + m.Count
	}
	buf = binary.AppendUvarint(buf, uint64(len(h.PrefetchOrder)))
	var prev int64
	for _, b := range h.PrefetchOrder {
		buf = binary.AppendVarint(buf, b-prev)
		prev = b
	}
	keys := make([]string, 0, len(h.Metadata))
	for k := range h.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	buf = binary.AppendUvarint(buf, uint64(len(keys)))
	for _, k := range keys {
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		v := h.Metadata[k]
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
	}
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
	return buf, nil
}

// headerFixedLen is the length of the fixed-size prefix.
const headerFixedLen = 8 + 4 + 4 + 8 + 8 + 16 + 16

// decoder reads varints from a byte slice, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = corruptf("truncated or overlong %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = corruptf("truncated or overlong %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count and checks that at least minEach bytes per element
// remain, so a hostile count never causes a huge allocation.
func (d *decoder) count(what string, minEach int) int {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(len(d.b)/minEach) {
		d.err = corruptf("%s count %d exceeds the remaining %d bytes", what, n, len(d.b))
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *decoder) bytes(n uint64, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = corruptf("truncated %s", what)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// ParseHeader decodes and validates a header. It returns an error wrapping
// ErrCorrupt for anything malformed: wrong magic or version, bad checksum,
// truncation, trailing bytes, or a block map that breaks an invariant.
func ParseHeader(b []byte) (*Header, error) {
	if len(b) < headerFixedLen+4 {
		return nil, corruptf("header of %d bytes is truncated", len(b))
	}
	if !bytes.Equal(b[:8], headerMagic[:]) {
		return nil, corruptf("bad header magic")
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, corruptf("header checksum mismatch (stored %08x, computed %08x)", sum, got)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != HeaderVersion {
		return nil, corruptf("unsupported header version %d", v)
	}
	shift := binary.LittleEndian.Uint32(b[12:])
	if shift < 12 || shift > 21 {
		return nil, corruptf("block shift %d out of range", shift)
	}
	h := &Header{
		BlockSize:  1 << shift,
		Size:       int64(binary.LittleEndian.Uint64(b[16:]) & (1<<63 - 1)),
		Generation: binary.LittleEndian.Uint64(b[24:]),
	}
	if binary.LittleEndian.Uint64(b[16:]) > maxImageSize {
		return nil, corruptf("image size out of range")
	}
	copy(h.BuildID[:], b[32:48])
	copy(h.BaseBuildID[:], b[48:64])

	d := &decoder{b: body[headerFixedLen:]}
	nb := d.count("build", 17)
	h.Builds = make([]BuildRef, nb)
	for i := range h.Builds {
		copy(h.Builds[i].ID[:], d.bytes(16, "build id"))
		l := d.uvarint("data length")
		if l > maxImageSize*2 {
			d.err = corruptf("build data length %d out of range", l)
		}
		h.Builds[i].DataLen = int64(l)
	}
	nm := d.count("mapping", 2)
	h.Mappings = make([]Mapping, nm)
	lastEnd := make([]int64, nb)
	var start int64
	nblocks := blocksFor(h.Size, h.BlockSize)
	for i := range h.Mappings {
		if d.err != nil {
			return nil, d.err
		}
		c := d.uvarint("mapping length")
		kind := d.uvarint("mapping kind")
		if c == 0 || c > uint64(nblocks) {
			return nil, corruptf("mapping %d length %d out of range", i, c)
		}
		m := Mapping{Start: start, Count: int64(c)}
		if kind == 0 {
			m.Zero = true
		} else {
			if kind > uint64(nb) {
				return nil, corruptf("mapping %d references build %d of %d", i, kind-1, nb)
			}
			j := int(kind - 1)
			delta := d.varint("data offset")
			m.Build = h.Builds[j].ID
			m.DataBlock = lastEnd[j] + delta
			if m.DataBlock < 0 || m.DataBlock > maxImageSize {
				return nil, corruptf("mapping %d data block %d out of range", i, m.DataBlock)
			}
			lastEnd[j] = m.DataBlock + m.Count
		}
		h.Mappings[i] = m
		start += m.Count
		if start > nblocks {
			return nil, corruptf("mappings exceed the image's %d blocks", nblocks)
		}
	}
	np := d.count("prefetch", 1)
	if np > 0 {
		h.PrefetchOrder = make([]int64, np)
	}
	var prev int64
	for i := range h.PrefetchOrder {
		prev += d.varint("prefetch entry")
		if d.err == nil && (prev < 0 || prev >= nblocks) {
			return nil, corruptf("prefetch entry %d out of range", i)
		}
		h.PrefetchOrder[i] = prev
	}
	nmeta := d.count("metadata", 2)
	if nmeta > 0 {
		h.Metadata = make(map[string]string, nmeta)
	}
	var lastKey string
	for i := range nmeta {
		kl := d.uvarint("metadata key length")
		k := string(d.bytes(kl, "metadata key"))
		vl := d.uvarint("metadata value length")
		v := string(d.bytes(vl, "metadata value"))
		if d.err != nil {
			return nil, d.err
		}
		if i > 0 && k <= lastKey {
			return nil, corruptf("metadata keys not sorted or duplicated at %q", k)
		}
		lastKey = k
		h.Metadata[k] = v
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, corruptf("%d trailing bytes after the header", len(d.b))
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return h, nil
}
