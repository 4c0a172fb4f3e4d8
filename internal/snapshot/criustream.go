package snapshot

// Streaming a CRIU dump into the store (issue 21, item 3).
//
// PauseCRIU takes a finished image directory: CRIU first writes every page
// into pages-<n>.img, and the store then reads them back, diffs them and
// writes its data file — two passes over the memory, one after the other.
// A CRIUPageServer instead speaks CRIU's page-server protocol
// (criu/page-xfer.c; `criu dump --page-server`, `runc checkpoint
// --page-server ADDR:PORT`): CRIU sends each pagemap range with its pages
// over a TCP connection while it dumps, and the server places them by
// virtual address, diffs them against the parent and writes the data file
// as they arrive, on another core. CRIU writes no pagemap or pages file;
// the server writes the pagemaps into the image directory when the dump is
// over (the same records CRIU would have written), and Finish stores the
// directory's other files in slot 0 and publishes the image — the same VA
// layout PauseCRIU makes, restored by WriteCRIUImages.
//
// Wire format (little-endian, x86-64 layout of struct page_server_iov):
//
//	u32 cmd (command | flags<<16), u32 padding, u64 nr_pages, u64 vaddr,
//	u64 dst_id (pagemap id<<8 | type: 1 task, 2 shared memory)
//
// OPEN2 opens a pagemap and is answered with one byte (has a parent
// image: always 0 here); ADD_F carries pagemap flags and, when PE_PRESENT
// is set, nr_pages × 4096 bytes of page data; CLOSE ends the session and
// is answered with an int32 status (0).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

const (
	psIOVAdd        = 1
	psIOVHole       = 2
	psIOVOpen       = 3
	psIOVOpen2      = 4
	psIOVAddF       = 6
	psIOVClose      = 0x1023
	psIOVForceClose = 0x1024
	psTypePID       = 1
	psTypeShmem     = 2
	psHeaderLen     = 32
	// psChunkPages is how many pages one buffer handed from the socket
	// reader to the store goroutine holds.
	psChunkPages = 1024
)

// errPeerGone: CRIU closed the session before CLOSE (it failed or was
// killed).
var errPeerGone = errors.New("snapshot: page server: criu ended the session before CLOSE")

// CRIUPageServer receives one CRIU dump's pages (see above). Start it with
// StartCRIUPageServer, hand Addr to CRIU, then call Finish after CRIU
// succeeded or Abort after it failed.
type CRIUPageServer struct {
	m      *Manager
	ln     net.Listener
	o      CRIUPauseOptions
	parent *Reader
	slots  *slotTable
	b      *builder
	s      sink
	start  time.Time

	mu    sync.Mutex
	conn  net.Conn
	maps  map[string]*Pagemap // by pagemap file name
	byDst map[uint64]string
	pages int64
	done  chan struct{} // closed when the session is over
	err   error         // the session's error (nil: CRIU closed it cleanly)

	finished bool
}

// psChunk is a run of received pages and the blocks they go to.
type psChunk struct {
	buf  []byte
	blks []int64
}

// StartCRIUPageServer listens on a loopback port for one CRIU dump that
// will be published by Finish, diffed against o.Parent as PauseCRIU does.
func (m *Manager) StartCRIUPageServer(ctx context.Context, o CRIUPauseOptions) (*CRIUPageServer, error) {
	ps := &CRIUPageServer{m: m, o: o, maps: map[string]*Pagemap{}, byDst: map[uint64]string{}, done: make(chan struct{}), start: time.Now()}
	m.gcMu.RLock()
	ok := false
	defer func() {
		if !ok {
			ps.release()
		}
	}()
	if o.Parent != "" {
		parent, err := OpenReader(ctx, m.Store, o.Parent)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, fmt.Errorf("snapshot: page server: open parent %s: %w", o.Parent, err)
		default:
			if parent.Metadata()[MetaCRIULayout] == CRIULayoutVA && parent.BlockSize() == criuPage {
				ps.parent = parent
			} else {
				_ = parent.Close()
			}
		}
	}
	ps.slots = parseSlots("")
	if ps.parent != nil {
		ps.slots = parseSlots(ps.parent.Metadata()[metaCRIUSlots])
	}
	b, err := newBuilder(criuPage, m.TempDir)
	if err != nil {
		return nil, err
	}
	b.unsorted = true
	ps.b = b
	ps.s = fullSink{b}
	if ps.parent != nil {
		ps.s = &diffSink{b: b, parent: ps.parent, buf: make([]byte, criuPage)}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		b.abort()
		ps.b = nil
		return nil, fmt.Errorf("snapshot: page server: %w", err)
	}
	ps.ln = ln
	ok = true
	go ps.serve()
	return ps, nil
}

// Addr is the "127.0.0.1:<port>" CRIU sends the pages to.
func (ps *CRIUPageServer) Addr() string { return ps.ln.Addr().String() }

// release drops the parent and the GC lock (once).
func (ps *CRIUPageServer) release() {
	if ps.parent != nil {
		_ = ps.parent.Close()
		ps.parent = nil
	}
	ps.m.gcMu.RUnlock()
}

// serve accepts CRIU's connection and runs the session. Only a
// connection from a socket owned by root (CRIU runs as root) is taken: a
// local unprivileged process cannot feed pages into a capsule's image.
func (ps *CRIUPageServer) serve() {
	defer close(ps.done)
	var c net.Conn
	for {
		var err error
		c, err = ps.ln.Accept()
		if err != nil {
			ps.err = fmt.Errorf("snapshot: page server: accept: %w", err)
			return
		}
		uid, err := loopbackPeerUID(c)
		if err == nil && uid == 0 {
			break
		}
		ps.m.log().Warn("criu page server: connection refused", "peer", c.RemoteAddr().String(), "uid", uid, "err", err)
		_ = c.Close()
	}
	_ = ps.ln.Close()
	ps.mu.Lock()
	ps.conn = c
	ps.mu.Unlock()
	defer c.Close()
	ps.err = ps.session(c)
}

// session reads commands on one goroutine and stores the pages on
// another, so CRIU's sends, the copy out of the socket and the store's
// hashing, diffing and writes overlap.
func (ps *CRIUPageServer) session(c net.Conn) error {
	chunks := make(chan psChunk, 2)
	free := make(chan []byte, 3)
	for range 3 {
		free <- make([]byte, psChunkPages*criuPage)
	}
	storeErr := make(chan error, 1)
	go func() {
		var err error
		for ch := range chunks {
			if err == nil {
				err = ps.store(ch)
			}
			free <- ch.buf
		}
		storeErr <- err
	}()
	err := ps.read(c, chunks, free)
	close(chunks)
	if serr := <-storeErr; err == nil {
		err = serr
	}
	return err
}

// store hands a chunk's pages to the sink. Without a parent, runs of
// non-zero pages on consecutive blocks are written with one write each.
func (ps *CRIUPageServer) store(ch psChunk) error {
	page := func(k int) []byte { return ch.buf[k*criuPage : (k+1)*criuPage] }
	if _, full := ps.s.(fullSink); !full {
		for k, blk := range ch.blks {
			if err := ps.s.data(blk, page(k)); err != nil {
				return err
			}
		}
		return nil
	}
	for k := 0; k < len(ch.blks); {
		if isZero(page(k)) {
			ps.b.zero(ch.blks[k], 1)
			k++
			continue
		}
		e := k + 1
		for e < len(ch.blks) && ch.blks[e] == ch.blks[e-1]+1 && !isZero(page(e)) {
			e++
		}
		if err := ps.b.storeRun(ch.blks[k], ch.buf[k*criuPage:e*criuPage]); err != nil {
			return err
		}
		k = e
	}
	return nil
}

func (ps *CRIUPageServer) read(c net.Conn, chunks chan<- psChunk, free chan []byte) error {
	hdr := make([]byte, psHeaderLen)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return fmt.Errorf("%w: %w", errPeerGone, err)
		}
		raw := binary.LittleEndian.Uint32(hdr)
		cmd, flags := raw&0xffff, raw>>16
		nr := binary.LittleEndian.Uint64(hdr[8:])
		vaddr := binary.LittleEndian.Uint64(hdr[16:])
		dst := binary.LittleEndian.Uint64(hdr[24:])
		switch cmd {
		case psIOVOpen, psIOVOpen2:
			if err := ps.open(dst); err != nil {
				return err
			}
			if cmd == psIOVOpen2 {
				// No parent image on this side: CRIU sends every page.
				if _, err := c.Write([]byte{0}); err != nil {
					return fmt.Errorf("snapshot: page server: %w", err)
				}
			}
		case psIOVAdd, psIOVAddF:
			if cmd == psIOVAdd {
				flags = pePresent
			}
			if err := ps.add(c, dst, vaddr, nr, flags, chunks, free); err != nil {
				return err
			}
		case psIOVClose, psIOVForceClose:
			if _, err := c.Write([]byte{0, 0, 0, 0}); err != nil {
				return fmt.Errorf("snapshot: page server: %w", err)
			}
			return nil
		case psIOVHole:
			return fmt.Errorf("%w: the dump has pages in a parent image", ErrCRIULayout)
		default:
			return fmt.Errorf("snapshot: page server: unknown command %#x", raw)
		}
	}
}

// open registers the pagemap dst names.
func (ps *CRIUPageServer) open(dst uint64) error {
	if _, ok := ps.byDst[dst]; ok {
		return nil
	}
	var name string
	id := dst >> 8
	switch dst & 0xff {
	case psTypePID:
		name = "pagemap-" + strconv.FormatUint(id, 10) + ".img"
	case psTypeShmem:
		name = "pagemap-shmem-" + strconv.FormatUint(id, 10) + ".img"
	default:
		return fmt.Errorf("snapshot: page server: unknown pagemap type in %#x", dst)
	}
	ps.byDst[dst] = name
	ps.maps[name] = &Pagemap{PagesID: uint32(len(ps.maps) + 1)}
	return nil
}

// add records one pagemap range and reads its pages.
func (ps *CRIUPageServer) add(c net.Conn, dst, vaddr, nr uint64, flags uint32, chunks chan<- psChunk, free chan []byte) error {
	name, ok := ps.byDst[dst]
	if !ok {
		return fmt.Errorf("snapshot: page server: pages for pagemap %#x that was not opened", dst)
	}
	if flags&pePresent == 0 || flags&peParent != 0 {
		return fmt.Errorf("%w: range %#x+%d pages has flags %#x (parent or lazy pages)", ErrCRIULayout, vaddr, nr, flags)
	}
	if vaddr%criuPage != 0 || nr == 0 || nr > 1<<36 || vaddr+nr*criuPage < vaddr {
		return fmt.Errorf("snapshot: page server: bad range %#x+%d pages", vaddr, nr)
	}
	pm := ps.maps[name]
	pm.Entries = append(pm.Entries, PagemapEntry{Vaddr: vaddr, NrPages: nr, Flags: flags, hasFlags: true})
	for left, va := nr, vaddr; left > 0; {
		n := min(left, psChunkPages)
		buf := <-free
		p := buf[:n*criuPage]
		if _, err := io.ReadFull(c, p); err != nil {
			free <- buf
			return fmt.Errorf("%w: read pages: %w", errPeerGone, err)
		}
		blks := make([]int64, n)
		for k := range blks {
			a := va + uint64(k)*criuPage
			s := ps.slots.slot(name+"@"+strconv.FormatUint(a>>criuSlotShift, 16), true)
			blks[k] = (s<<criuSlotShift + int64(a&uint64(criuSlotSize-1))) / criuPage
		}
		chunks <- psChunk{buf: p, blks: blks}
		ps.pages += int64(n)
		left -= n
		va += n * criuPage
	}
	return nil
}

// wait ends the session: it returns once CRIU closed it, or closes the
// connection when ctx is done.
func (ps *CRIUPageServer) wait(ctx context.Context) error {
	select {
	case <-ps.done:
		return ps.err
	case <-ctx.Done():
		ps.stop()
		<-ps.done
		return ctx.Err()
	}
}

// stop closes the listener and the connection (the session then ends).
func (ps *CRIUPageServer) stop() {
	_ = ps.ln.Close()
	ps.mu.Lock()
	if ps.conn != nil {
		_ = ps.conn.Close()
	}
	ps.mu.Unlock()
}

// Failed returns the session's error after Abort when the page server
// itself failed (a layout it cannot hold, a write error, a protocol
// error), nil when the session went well or CRIU ended it: then a dump
// that failed failed on CRIU's side, and dumping again to files would fail
// the same way.
func (ps *CRIUPageServer) Failed() error {
	select {
	case <-ps.done:
	default:
		return nil
	}
	if ps.err == nil || errors.Is(ps.err, errPeerGone) || errors.Is(ps.err, net.ErrClosed) {
		return nil
	}
	return ps.err
}

// Abort ends the session and deletes what it built. Safe to call after
// Finish (it then does nothing).
func (ps *CRIUPageServer) Abort() {
	if ps.finished {
		return
	}
	ps.finished = true
	ps.stop()
	<-ps.done
	ps.b.abort()
	ps.release()
}

// Finish waits for CRIU's session to end, writes the pagemaps into dir
// (CRIU's image directory of the same dump, which holds every other
// image) and publishes the image as name: dir's files in slot 0, the
// pages where the session placed them. md, when not nil, replaces the
// metadata given to StartCRIUPageServer.
func (ps *CRIUPageServer) Finish(ctx context.Context, name, dir string, md map[string]string) (*Header, CRIUStats, error) {
	var stats CRIUStats
	if md != nil {
		ps.o.Metadata = md
	}
	if ps.finished {
		return nil, stats, errors.New("snapshot: page server already finished")
	}
	if err := ps.wait(ctx); err != nil {
		ps.Abort()
		return nil, stats, err
	}
	ps.finished = true
	defer ps.release()
	fail := func(err error) (*Header, CRIUStats, error) {
		ps.b.abort()
		return nil, stats, err
	}
	if err := store.ValidName(name); err != nil {
		return fail(err)
	}
	stats.PageBytes = ps.pages * criuPage
	for _, n := range slices.Sorted(mapsKeys(ps.maps)) {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, AppendPagemap(nil, ps.maps[n]), 0o600); err != nil {
			return fail(fmt.Errorf("snapshot: %w", err))
		}
	}
	cd, err := readCRIUDir(dir)
	if err != nil {
		return fail(err)
	}
	for p := range cd.pages {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			return fail(fmt.Errorf("snapshot: page server: %s is in the image directory: CRIU did not send its pages", p))
		}
	}
	if int64(len(ps.slots.keys)+1)*criuSlotSize > maxImageSize {
		return fail(fmt.Errorf("%w: %d address windows", ErrCRIULayout, len(ps.slots.keys)))
	}
	tarPath, tarLen, err := tarFiles(dir, cd.other, ps.m.TempDir)
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tarPath)
	if tarLen > criuSlotSize {
		return fail(fmt.Errorf("%w: %d bytes of other images", ErrCRIULayout, tarLen))
	}
	stats.TarBytes = tarLen
	tf, err := os.Open(tarPath)
	if err != nil {
		return fail(fmt.Errorf("snapshot: %w", err))
	}
	err = scan(ctx, tf, tarLen, criuPage, 0, blocksFor(tarLen, criuPage), ps.s, scanBuffer(criuPage))
	_ = tf.Close()
	if err != nil {
		return fail(err)
	}
	return ps.m.publishCRIU(ctx, name, ps.b, ps.slots, ps.parent, tarLen, ps.o, stats, ps.start)
}

// loopbackPeerUID returns the uid owning the other end of a loopback TCP
// connection, from /proc/net/tcp (the peer's socket is the entry whose
// local address is c's remote address and whose remote address is c's
// local one).
func loopbackPeerUID(c net.Conn) (int, error) {
	la, ok1 := c.LocalAddr().(*net.TCPAddr)
	ra, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 || !ra.IP.IsLoopback() {
		return -1, errors.New("not a loopback TCP connection")
	}
	hexAddr := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		if ip == nil {
			return ""
		}
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	want, peer := hexAddr(ra), hexAddr(la)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return -1, err
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 7 && f[1] == want && f[2] == peer {
			return strconv.Atoi(f[7])
		}
	}
	return -1, errors.New("peer socket not found in /proc/net/tcp")
}
