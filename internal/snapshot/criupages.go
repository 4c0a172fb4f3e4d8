package snapshot

// CRIU page images by virtual address (issue 21, item 3).
//
// CRIU writes a process's memory as pagemap-<pid>.img (the virtual address
// ranges it dumped, in address order) and pages-<n>.img (their pages, back
// to back, in the pagemap's order). Offsets in pages-<n>.img shift whenever
// a mapping grows, shrinks or appears, so a block-wise diff of the page file
// against the previous dump finds almost nothing in common. PauseCRIU maps
// every dumped page to a block address derived from its *virtual address*
// instead, so the same page of the same process lands on the same block in
// every dump, and the snapshot engine's diff against the parent stores only
// the pages whose content changed (no soft-dirty tracking is needed: the
// new page's CRC32C is compared with the parent block's stored checksum,
// and equal checksums are confirmed byte for byte).
//
// The image's address space is cut into slots of criuSlotSize bytes:
//
//	slot 0            a tar of every other file of the image directory
//	                  (pagemaps, core, mm, files... : small), wrenn.criu_tar_bytes long
//	slot 1, 2, ...    one 1 GiB-aligned window of one pagemap's address
//	                  space each: key "<pagemap file>@<vaddr >> 30>" in
//	                  wrenn.criu_slots (comma-separated, in slot order)
//
// A re-pause keeps the parent's slot of every key it still has and appends
// new keys, so unchanged memory keeps its block addresses. Restore
// (WriteCRIUImages) unpacks the tar and rebuilds each pages-<n>.img by
// reading, for every present pagemap entry, the blocks at its virtual
// addresses, in the order the pagemap lists them: it reads only the pages
// the dump holds, never the zero space between them.

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

const (
	// MetaCRIULayout marks an image made by PauseCRIU (value CRIULayoutVA).
	MetaCRIULayout = "wrenn.criu_layout"
	// CRIULayoutVA is the layout described above.
	CRIULayoutVA   = "va1"
	metaCRIUSlots  = "wrenn.criu_slots"
	metaCRIUTarLen = "wrenn.criu_tar_bytes"

	criuSlotShift = 30
	criuSlotSize  = int64(1) << criuSlotShift
	// criuPage is the page size of CRIU's page images on this architecture.
	criuPage = 4096

	// DefaultCRIUMaxChain is how many builds a CRIU memory image may
	// reference before it is merged: diffs are what make a re-pause cheap,
	// a bounded chain keeps a resume's reads few.
	DefaultCRIUMaxChain = 8

	imgCommonMagic  = 0x54564319
	imgServiceMagic = 0x58313116
	pagemapMagic    = 0x56084025

	peParent  = 1 << 0
	pePresent = 1 << 2
)

// ErrCRIULayout says an image directory cannot be stored by virtual address
// (pre-dump parents, lazy pages, an over-large directory): store it as an
// archive instead.
var ErrCRIULayout = errors.New("snapshot: criu images cannot be stored by virtual address")

// PagemapEntry is one range of a CRIU pagemap.
type PagemapEntry struct {
	Vaddr uint64
	// NrPages is the range's length in pages (CRIU ≥ 3.16 writes field 5,
	// "pages"; older ones field 2, "nr_pages").
	NrPages  uint64
	InParent bool
	Flags    uint32
	hasFlags bool
}

// present reports whether the entry's pages are in the pages file.
func (e PagemapEntry) present() bool {
	if e.hasFlags {
		return e.Flags&pePresent != 0
	}
	return !e.InParent
}

// Pagemap is a parsed pagemap image: the id of its pages file and its
// entries, in file order.
type Pagemap struct {
	PagesID uint32
	Entries []PagemapEntry
}

// ReadPagemap parses a CRIU pagemap image (pagemap-<pid>.img or
// pagemap-shmem-<id>.img).
func ReadPagemap(path string) (*Pagemap, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	bad := func(what string) error { return fmt.Errorf("snapshot: pagemap %s: %s", filepath.Base(path), what) }
	if len(b) < 4 {
		return nil, bad("truncated magic")
	}
	m := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if m == imgCommonMagic || m == imgServiceMagic {
		if len(b) < 4 {
			return nil, bad("truncated magic")
		}
		m = binary.LittleEndian.Uint32(b)
		b = b[4:]
	}
	if m != pagemapMagic {
		return nil, bad(fmt.Sprintf("magic %#x is not a pagemap's", m))
	}
	pm := &Pagemap{}
	first := true
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, bad("truncated entry size")
		}
		n := int(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if n > len(b) {
			return nil, bad("truncated entry")
		}
		msg := b[:n]
		b = b[n:]
		var e PagemapEntry
		for len(msg) > 0 {
			num, typ, l := protowire.ConsumeTag(msg)
			if l < 0 {
				return nil, bad("bad field tag")
			}
			msg = msg[l:]
			if typ != protowire.VarintType {
				l = protowire.ConsumeFieldValue(num, typ, msg)
				if l < 0 {
					return nil, bad("bad field")
				}
				msg = msg[l:]
				continue
			}
			v, l := protowire.ConsumeVarint(msg)
			if l < 0 {
				return nil, bad("bad varint")
			}
			msg = msg[l:]
			if first {
				if num == 1 {
					pm.PagesID = uint32(v)
				}
				continue
			}
			switch num {
			case 1:
				e.Vaddr = v
			case 2:
				if e.NrPages == 0 {
					e.NrPages = v
				}
			case 5:
				if v != 0 {
					e.NrPages = v
				}
			case 3:
				e.InParent = v != 0
			case 4:
				e.Flags, e.hasFlags = uint32(v), true
			}
		}
		if first {
			first = false
			continue
		}
		if e.Vaddr%criuPage != 0 {
			return nil, bad(fmt.Sprintf("unaligned address %#x", e.Vaddr))
		}
		// 2^36 pages is 256 TiB: more than any address space here.
		if e.NrPages > 1<<36 || e.Vaddr+e.NrPages*criuPage < e.Vaddr {
			return nil, bad(fmt.Sprintf("range %#x+%d pages out of bounds", e.Vaddr, e.NrPages))
		}
		pm.Entries = append(pm.Entries, e)
	}
	if first {
		return nil, bad("no head")
	}
	return pm, nil
}

// AppendPagemap encodes pm as CRIU writes it (for tests and tools).
func AppendPagemap(b []byte, pm *Pagemap) []byte {
	b = binary.LittleEndian.AppendUint32(b, imgCommonMagic)
	b = binary.LittleEndian.AppendUint32(b, pagemapMagic)
	head := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(pm.PagesID))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(head)))
	b = append(b, head...)
	for _, e := range pm.Entries {
		m := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), e.Vaddr)
		// As CRIU 4 writes it: the deprecated 32-bit field 2 zero, the
		// length in field 5.
		m = protowire.AppendVarint(protowire.AppendTag(m, 2, protowire.VarintType), 0)
		if e.InParent {
			m = protowire.AppendVarint(protowire.AppendTag(m, 3, protowire.VarintType), 1)
		}
		m = protowire.AppendVarint(protowire.AppendTag(m, 4, protowire.VarintType), uint64(e.Flags))
		m = protowire.AppendVarint(protowire.AppendTag(m, 5, protowire.VarintType), e.NrPages)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	return b
}

// pagesName is the pages file a pagemap's pages are in.
func pagesName(id uint32) string { return "pages-" + strconv.FormatUint(uint64(id), 10) + ".img" }

// criuDir is an image directory split into its pagemaps and the rest.
type criuDir struct {
	maps  map[string]*Pagemap // by pagemap file name
	pages map[string]bool     // pages files the pagemaps use
	other []string            // every other file, sorted
}

func readCRIUDir(dir string) (*criuDir, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	d := &criuDir{maps: map[string]*Pagemap{}, pages: map[string]bool{}}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("snapshot: criu image %s is not a regular file", name)
		}
		if strings.HasPrefix(name, "pagemap-") && strings.HasSuffix(name, ".img") {
			pm, err := ReadPagemap(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			for _, en := range pm.Entries {
				// Pages in a parent image (pre-dump) or left to a lazy-pages
				// daemon are not in this directory's pages files. (PE_LAZY
				// alone only says the range could be restored lazily.)
				if en.InParent || en.Flags&peParent != 0 || (en.hasFlags && en.Flags&pePresent == 0) {
					return nil, fmt.Errorf("%w: %s has pages in a parent image or lazy pages", ErrCRIULayout, name)
				}
			}
			d.maps[name] = pm
			d.pages[pagesName(pm.PagesID)] = true
		}
	}
	for _, e := range ents {
		if !d.pages[e.Name()] {
			d.other = append(d.other, e.Name())
		}
	}
	slices.Sort(d.other)
	return d, nil
}

// pageRun is a run of pages of one pages file that lands on consecutive
// blocks of the image.
type pageRun struct {
	blk   int64 // first block in the image
	n     int64 // pages
	file  string
	off   int64 // byte offset in the pages file
	entry int   // order of appearance (for restore)
}

// slotTable assigns slots to "<pagemap>@<window>" keys.
type slotTable struct {
	keys []string // slot i+1 holds keys[i]
	idx  map[string]int64
}

func parseSlots(s string) *slotTable {
	t := &slotTable{idx: map[string]int64{}}
	if s == "" {
		return t
	}
	for _, k := range strings.Split(s, ",") {
		t.keys = append(t.keys, k)
		t.idx[k] = int64(len(t.keys))
	}
	return t
}

// slot returns key's slot, appending it when add is set (-1 if absent).
func (t *slotTable) slot(key string, add bool) int64 {
	if s, ok := t.idx[key]; ok {
		return s
	}
	if !add {
		return -1
	}
	t.keys = append(t.keys, key)
	t.idx[key] = int64(len(t.keys))
	return int64(len(t.keys))
}

// runs cuts pm's present entries at slot boundaries and places them.
func (t *slotTable) runs(name string, pm *Pagemap, add bool) ([]pageRun, error) {
	var out []pageRun
	var off int64
	pages := pagesName(pm.PagesID)
	for i, e := range pm.Entries {
		if !e.present() {
			continue
		}
		va, left := e.Vaddr, int64(e.NrPages)
		for left > 0 {
			win := va >> criuSlotShift
			inWin := (criuSlotSize - int64(va&uint64(criuSlotSize-1))) / criuPage
			n := min(left, inWin)
			s := t.slot(name+"@"+strconv.FormatUint(win, 16), add)
			if s < 0 {
				return nil, fmt.Errorf("snapshot: criu image: %s has no slot for %#x", name, va)
			}
			out = append(out, pageRun{
				blk: (s<<criuSlotShift + int64(va&uint64(criuSlotSize-1))) / criuPage,
				n:   n, file: pages, off: off, entry: i,
			})
			off += n * criuPage
			va += uint64(n * criuPage)
			left -= n
		}
	}
	return out, nil
}

// CRIUStats describes one PauseCRIU.
type CRIUStats struct {
	// PageBytes is the size of the dumped pages; TarBytes of the rest.
	PageBytes, TarBytes int64
	// StoredBytes is what this pause's own build stored (blocks).
	StoredBytes int64
	// Merged: the chain was collapsed (everything was stored again).
	Merged bool
	// Process is the time spent reading, hashing and writing blocks;
	// Publish the upload (data, then header).
	Process, Publish time.Duration
}

// CRIUPauseOptions describe one PauseCRIU.
type CRIUPauseOptions struct {
	// Parent names the previous memory image of the same capsule ("" or
	// a missing or non-VA image: a full image).
	Parent   string
	Metadata map[string]string
	// MaxChain bounds the builds one image references (0 means
	// DefaultCRIUMaxChain); a longer chain is merged.
	MaxChain int
}

// PauseCRIU stores the CRIU image directory dir as name with the layout
// above, diffing against o.Parent when it is a VA image. It returns
// ErrCRIULayout (wrapped) for a directory it cannot store so.
func (m *Manager) PauseCRIU(ctx context.Context, name, dir string, o CRIUPauseOptions) (*Header, CRIUStats, error) {
	var stats CRIUStats
	if err := store.ValidName(name); err != nil {
		return nil, stats, err
	}
	cd, err := readCRIUDir(dir)
	if err != nil {
		return nil, stats, err
	}
	m.gcMu.RLock()
	defer m.gcMu.RUnlock()
	start := time.Now()
	var parent *Reader
	if o.Parent != "" {
		parent, err = OpenReader(ctx, m.Store, o.Parent)
		switch {
		case errors.Is(err, store.ErrNotFound):
			parent = nil
		case err != nil:
			return nil, stats, fmt.Errorf("snapshot: pause %s: open parent: %w", name, err)
		default:
			defer parent.Close()
			if parent.Metadata()[MetaCRIULayout] != CRIULayoutVA || parent.BlockSize() != criuPage {
				parent = nil
			}
		}
	}
	slots := parseSlots("")
	if parent != nil {
		slots = parseSlots(parent.Metadata()[metaCRIUSlots])
	}
	var runs []pageRun
	for _, n := range slices.Sorted(mapsKeys(cd.maps)) {
		r, err := slots.runs(n, cd.maps[n], true)
		if err != nil {
			return nil, stats, err
		}
		runs = append(runs, r...)
	}
	slices.SortFunc(runs, func(a, b pageRun) int { return int(a.blk - b.blk) })
	if int64(len(slots.keys)+1)*criuSlotSize > maxImageSize {
		return nil, stats, fmt.Errorf("%w: %d address windows", ErrCRIULayout, len(slots.keys))
	}

	// The other files, as a tar in slot 0.
	tarPath, tarLen, err := tarFiles(dir, cd.other, m.TempDir)
	if err != nil {
		return nil, stats, err
	}
	defer os.Remove(tarPath)
	if tarLen > criuSlotSize {
		return nil, stats, fmt.Errorf("%w: %d bytes of other images", ErrCRIULayout, tarLen)
	}
	stats.TarBytes = tarLen

	b, err := newBuilder(criuPage, m.TempDir)
	if err != nil {
		return nil, stats, err
	}
	var s sink = fullSink{b}
	if parent != nil {
		s = &diffSink{b: b, parent: parent, buf: make([]byte, criuPage)}
	}
	tf, err := os.Open(tarPath)
	if err != nil {
		b.abort()
		return nil, stats, fmt.Errorf("snapshot: %w", err)
	}
	tarBlocks := blocksFor(tarLen, criuPage)
	err = scan(ctx, tf, tarLen, criuPage, 0, tarBlocks, s, scanBuffer(criuPage))
	_ = tf.Close()
	if err != nil {
		b.abort()
		return nil, stats, err
	}
	cursor := tarBlocks
	for _, r := range runs {
		if r.blk < cursor {
			b.abort()
			return nil, stats, fmt.Errorf("snapshot: criu image: overlapping pages at block %d", r.blk)
		}
		cursor = r.blk + r.n
	}
	cursor = tarBlocks
	// One goroutine reads the pages files; this one zero-checks, diffs,
	// hashes and writes what it read before (two cores).
	type chunk struct {
		blk int64
		p   []byte
		err error
	}
	free := make(chan []byte, 2)
	free <- make([]byte, scanChunk)
	free <- make([]byte, scanChunk)
	full := make(chan chunk, 2)
	stop := make(chan struct{})
	go func() {
		defer close(full)
		files := map[string]*os.File{}
		defer func() {
			for _, f := range files {
				_ = f.Close()
			}
		}()
		send := func(c chunk) bool {
			select {
			case full <- c:
				return c.err == nil
			case <-stop:
				return false
			}
		}
		for _, r := range runs {
			f := files[r.file]
			if f == nil {
				var err error
				if f, err = os.Open(filepath.Join(dir, r.file)); err != nil {
					send(chunk{err: fmt.Errorf("snapshot: %w", err)})
					return
				}
				files[r.file] = f
			}
			for done := int64(0); done < r.n; {
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				n := min(int64(len(buf))/criuPage, r.n-done)
				p := buf[:n*criuPage]
				err := ctx.Err()
				if err == nil {
					if _, rerr := f.ReadAt(p, r.off+done*criuPage); rerr != nil {
						err = fmt.Errorf("snapshot: read %s: %w", r.file, rerr)
					}
				}
				if !send(chunk{blk: r.blk + done, p: p, err: err}) {
					return
				}
				done += n
			}
		}
	}()
	defer func() {
		close(stop)
		for range full {
		}
	}()
	for c := range full {
		if c.err == nil && c.blk > cursor {
			s.zeros(cursor, c.blk-cursor)
		}
		if c.err == nil {
			c.err = storePages(b, s, c.blk, c.p)
		}
		if c.err != nil {
			b.abort()
			return nil, stats, c.err
		}
		stats.PageBytes += int64(len(c.p))
		cursor = c.blk + int64(len(c.p))/criuPage
		free <- c.p[:cap(c.p)]
	}
	size := int64(len(slots.keys)+1) * criuSlotSize
	s.zeros(cursor, size/criuPage-cursor)
	return m.publishCRIU(ctx, name, b, slots, parent, tarLen, o, stats, start)
}

// publishCRIU finishes b (every block of the image placed: the tar in
// slot 0 and the pages), merges a chain longer than o.MaxChain and
// publishes the image as name. It consumes b.
func (m *Manager) publishCRIU(ctx context.Context, name string, b *builder, slots *slotTable, parent *Reader, tarLen int64, o CRIUPauseOptions, stats CRIUStats, start time.Time) (*Header, CRIUStats, error) {
	size := int64(len(slots.keys)+1) * criuSlotSize
	if b.unsorted {
		if err := b.sortMappings(size / criuPage); err != nil {
			b.abort()
			return nil, stats, err
		}
	}

	md := make(map[string]string, len(o.Metadata)+3)
	for k, v := range o.Metadata {
		md[k] = v
	}
	md[MetaCRIULayout] = CRIULayoutVA
	md[metaCRIUSlots] = strings.Join(slots.keys, ",")
	if len(md[metaCRIUSlots]) > maxMetaLen {
		b.abort()
		return nil, stats, fmt.Errorf("%w: %d address windows", ErrCRIULayout, len(slots.keys))
	}
	md[metaCRIUTarLen] = strconv.FormatInt(tarLen, 10)
	h := &Header{BlockSize: criuPage, Size: size, Metadata: md}
	var refs map[BuildID]int64
	if parent != nil {
		ph := parent.Header()
		h.Generation, h.BaseBuildID = ph.Generation+1, ph.BuildID
		refs = make(map[BuildID]int64, len(ph.Builds))
		for _, r := range ph.Builds {
			refs[r.ID] = r.DataLen
		}
	}
	img, err := b.finish(h, refs)
	if err != nil {
		return nil, stats, err
	}
	defer func(i *Image) { _ = i.Remove() }(img)
	maxChain := o.MaxChain
	if maxChain <= 0 {
		maxChain = DefaultCRIUMaxChain
	}
	if len(img.Header.Builds) > maxChain {
		merged, err := m.merge(ctx, img)
		if err != nil {
			return nil, stats, fmt.Errorf("snapshot: pause %s: %w", name, err)
		}
		defer func() { _ = merged.Remove() }()
		img = merged
		stats.Merged = true
	}
	if own, ok := img.Header.Build(img.Header.BuildID); ok {
		stats.StoredBytes = dataBlocksFor(own.DataLen, criuPage) * criuPage
	} else {
		stats.StoredBytes = 0
	}
	stats.Process = time.Since(start)
	pub := time.Now()
	if err := Publish(ctx, m.Store, name, img); err != nil {
		return nil, stats, err
	}
	stats.Publish = time.Since(pub)
	m.log().Info("criu memory image published", "name", name, "build", img.Header.BuildID.String(),
		"generation", img.Header.Generation, "page_bytes", stats.PageBytes, "stored_bytes", stats.StoredBytes,
		"chain", len(img.Header.Builds), "merged", stats.Merged, "process", stats.Process, "publish", stats.Publish)
	return img.Header, stats, nil
}

// storePages hands the pages of p, which go to consecutive blocks from
// blk, to s. Without a parent (fullSink), each run of non-zero pages is
// written with one write: no copy through the data file's buffer.
func storePages(b *builder, s sink, blk int64, p []byte) error {
	n := len(p) / criuPage
	page := func(k int) []byte { return p[k*criuPage : (k+1)*criuPage] }
	if _, full := s.(fullSink); !full {
		for k := range n {
			if err := s.data(blk+int64(k), page(k)); err != nil {
				return err
			}
		}
		return nil
	}
	for k := 0; k < n; {
		if isZero(page(k)) {
			b.zero(blk+int64(k), 1)
			k++
			continue
		}
		e := k + 1
		for e < n && !isZero(page(e)) {
			e++
		}
		if err := b.storeRun(blk+int64(k), p[k*criuPage:e*criuPage]); err != nil {
			return err
		}
		k = e
	}
	return nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// tarFiles writes the named files of dir into a tar in tempDir.
func tarFiles(dir string, names []string, tempDir string) (path string, n int64, err error) {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	out, err := os.CreateTemp(tempDir, "wrenn-criu-*.tar")
	if err != nil {
		return "", 0, fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(out.Name())
		}
	}()
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	for _, name := range names {
		if err := addTarFile(tw, filepath.Join(dir, name)); err != nil {
			return "", 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return "", 0, fmt.Errorf("snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return "", 0, fmt.Errorf("snapshot: %w", err)
	}
	st, err := out.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("snapshot: %w", err)
	}
	return out.Name(), st.Size(), nil
}

func addTarFile(tw *tar.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	hdr := &tar.Header{Name: filepath.Base(path), Mode: 0o600, Size: st.Size(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// IsCRIUVA reports whether r is an image PauseCRIU made.
func IsCRIUVA(r *Reader) bool { return r.Metadata()[MetaCRIULayout] == CRIULayoutVA }

// WriteCRIUImages rebuilds the image directory PauseCRIU stored into dir
// (which must not hold the files yet): the other files from the tar in
// slot 0 (plain names only), then each pagemap's pages file, read block by
// block at the pagemap's virtual addresses in the pagemap's order. Blocks
// outside the dumped pages are never read.
func WriteCRIUImages(ctx context.Context, r *Reader, dir string) error {
	if !IsCRIUVA(r) {
		return fmt.Errorf("snapshot: image is not a criu va image")
	}
	tarLen, err := strconv.ParseInt(r.Metadata()[metaCRIUTarLen], 10, 64)
	if err != nil || tarLen < 0 || tarLen > criuSlotSize {
		return corruptf("criu image: bad tar length %q", r.Metadata()[metaCRIUTarLen])
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	tr := tar.NewReader(bufio.NewReaderSize(io.NewSectionReader(r, 0, tarLen), 1<<20))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("snapshot: criu image archive: %w", err)
		}
		n := hdr.Name
		if hdr.Typeflag != tar.TypeReg || n == "" || n != filepath.Base(n) || n == "." || n == ".." || hdr.Size > criuSlotSize {
			return corruptf("criu image archive: bad entry %q", n)
		}
		if err := writeNew(filepath.Join(dir, n), tr); err != nil {
			return err
		}
	}
	slots := parseSlots(r.Metadata()[metaCRIUSlots])
	cd, err := readCRIUDir(dir)
	if err != nil {
		return err
	}
	buf := make([]byte, scanChunk)
	for _, name := range slices.Sorted(mapsKeys(cd.maps)) {
		runs, err := slots.runs(name, cd.maps[name], false)
		if err != nil {
			return err
		}
		if err := writePages(ctx, r, filepath.Join(dir, pagesName(cd.maps[name].PagesID)), runs, buf); err != nil {
			return err
		}
	}
	return nil
}

// writePages writes runs (in pagemap order) into a new pages file. One
// goroutine reads (and CRC-checks) the blocks while this one writes the
// previous chunk, so a resume's unpacking uses both cores.
func writePages(ctx context.Context, r *Reader, path string, runs []pageRun, buf []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("snapshot: %w", cerr)
		}
	}()
	type chunk struct {
		p   []byte
		err error
	}
	free := make(chan []byte, 2)
	free <- buf
	free <- make([]byte, len(buf))
	full := make(chan chunk, 2)
	stop := make(chan struct{})
	go func() {
		defer close(full)
		for _, run := range runs {
			for done := int64(0); done < run.n; {
				var b []byte
				select {
				case b = <-free:
				case <-stop:
					return
				}
				n := min(int64(len(b))/criuPage, run.n-done)
				p := b[:n*criuPage]
				err := ctx.Err()
				if err == nil {
					if _, rerr := r.ReadAt(p, (run.blk+done)*criuPage); rerr != nil {
						err = fmt.Errorf("snapshot: criu pages: %w", rerr)
					}
				}
				select {
				case full <- chunk{p, err}:
				case <-stop:
					return
				}
				if err != nil {
					return
				}
				done += n
			}
		}
	}()
	// The reader is gone (it uses r) before this returns.
	defer func() {
		close(stop)
		for range full {
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	for c := range full {
		if c.err != nil {
			return c.err
		}
		if _, err := w.Write(c.p); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		free <- c.p[:cap(c.p)]
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

func writeNew(path string, r io.Reader) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("snapshot: %w", cerr)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// crcOf is the checksum a data file keeps of a block.
func crcOf(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }
