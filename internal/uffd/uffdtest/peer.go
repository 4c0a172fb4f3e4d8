// Package uffdtest plays Firecracker's side of the UFFD handler protocol so
// that tests and benchmarks can drive a uffd.Server without a VMM: it maps
// anonymous guest memory regions, creates a userfaultfd with
// UFFD_FEATURE_EVENT_REMOVE, registers the regions in MISSING mode, and sends
// the descriptor with the JSON mappings over the server's socket — exactly
// the steps Firecracker takes on snapshot load. It then touches and checks
// the memory the way a resumed guest would.
//
// Invariants: memory of a Peer may only be touched from goroutines other than
// the server's handler; a touch blocks until the server serves the page; and
// a page is first touched from plain Go code (Touch), never from an assembly
// routine, so the Go runtime can still stop the world while the toucher is
// blocked (see Touch).
package uffdtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uapi"
)

// Region describes one guest memory region to map: Size bytes whose content
// is the image at Offset. PageSize (0: the system page) is the page size
// announced in the handshake; the region is aligned to it. A PageSize above
// the system page over ordinary anonymous memory exercises the server's
// huge-page path (whole-huge-page copies, zeros by copy) without reserving
// hugetlbfs pages on the host.
type Region struct {
	Size     int64
	Offset   int64
	PageSize int64
}

func (r Region) pageSize() int64 {
	if r.PageSize == 0 {
		return int64(os.Getpagesize())
	}
	return r.PageSize
}

// Peer is the VMM side: guest memory plus its userfaultfd.
type Peer struct {
	UFFD    int
	Mems    [][]byte
	Regions []Region
	conn    *net.UnixConn
}

// NewPeer maps the regions and registers them with a new userfaultfd.
func NewPeer(regions []Region) (p *Peer, err error) {
	p = &Peer{UFFD: -1, Regions: regions}
	defer func() {
		if err != nil {
			_ = p.Close()
		}
	}()
	for _, r := range regions {
		mem, err := mapAligned(r.Size, r.pageSize())
		if err != nil {
			return nil, err
		}
		p.Mems = append(p.Mems, mem)
	}
	if p.UFFD, err = uapi.New(unix.O_CLOEXEC | unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	if _, _, err := uapi.Handshake(p.UFFD, uapi.FeatureEventRemove); err != nil {
		return nil, err
	}
	for _, mem := range p.Mems {
		ioctls, err := uapi.Register(p.UFFD, addr(mem), uint64(len(mem)), uapi.RegisterModeMissing)
		if err != nil {
			return nil, err
		}
		if ioctls&uapi.RangeIoctlCopy == 0 {
			return nil, fmt.Errorf("registered range does not allow UFFDIO_COPY (ioctls %#x)", ioctls)
		}
	}
	return p, nil
}

// mapAligned maps size bytes of anonymous memory aligned to align.
func mapAligned(size, align int64) ([]byte, error) {
	total := uintptr(size + align - int64(os.Getpagesize()))
	base, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap guest region of %d bytes: %w", size, err)
	}
	start := (uintptr(base) + uintptr(align) - 1) &^ (uintptr(align) - 1)
	end := start + uintptr(size)
	if head := start - uintptr(base); head > 0 {
		if err := unix.MunmapPtr(base, head); err != nil {
			return nil, fmt.Errorf("trim guest region: %w", err)
		}
	}
	if tail := uintptr(base) + total - end; tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(base, end-uintptr(base)), tail); err != nil {
			return nil, fmt.Errorf("trim guest region: %w", err)
		}
	}
	return unsafe.Slice((*byte)(unsafe.Add(base, start-uintptr(base))), size), nil
}

func addr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// Mappings is the handshake payload for this peer's regions.
func (p *Peer) Mappings() []uffd.Mapping {
	ms := make([]uffd.Mapping, len(p.Mems))
	for i, mem := range p.Mems {
		ps := uint64(p.Regions[i].pageSize())
		ms[i] = uffd.Mapping{
			BaseHostVirtAddr: addr(mem),
			Size:             uint64(len(mem)),
			Offset:           uint64(p.Regions[i].Offset),
			PageSize:         ps,
			PageSizeKiB:      ps, // Firecracker sends both; the old name carries bytes
		}
	}
	return ms
}

// Connect dials the server and sends the userfaultfd and mappings in one
// message. The connection stays open, as Firecracker keeps it for its life.
func (p *Peer) Connect(path string) error {
	body, err := json.Marshal(p.Mappings())
	if err != nil {
		return fmt.Errorf("encode mappings: %w", err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("connect to page server: %w", err)
	}
	if _, _, err := conn.WriteMsgUnix(body, unix.UnixRights(p.UFFD), nil); err != nil {
		_ = conn.Close()
		return fmt.Errorf("send userfaultfd and mappings: %w", err)
	}
	p.conn = conn
	return nil
}

// Hangup closes the connection, as the socket closes when Firecracker exits.
func (p *Peer) Hangup() error {
	if p.conn == nil {
		return nil
	}
	err := p.conn.Close()
	p.conn = nil
	return err
}

// Close hangs up, closes the userfaultfd and unmaps guest memory. No
// goroutine may be touching the memory.
func (p *Peer) Close() error {
	errs := []error{p.Hangup()}
	if p.UFFD >= 0 {
		errs = append(errs, unix.Close(p.UFFD))
		p.UFFD = -1
	}
	for _, mem := range p.Mems {
		errs = append(errs, unix.MunmapPtr(unsafe.Pointer(&mem[0]), uintptr(len(mem))))
	}
	p.Mems = nil
	return errors.Join(errs...)
}

// Remove drops [off, off+length) of region i with MADV_DONTNEED, as
// Firecracker does when the balloon inflates; the kernel reports it to the
// server as UFFD_EVENT_REMOVE and blocks here until the server has read it.
func (p *Peer) Remove(i int, off, length int64) error {
	if err := unix.Madvise(p.Mems[i][off:off+length], unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("madvise(DONTNEED) region %d [%d, +%d): %w", i, off, length, err)
	}
	return nil
}

// Page identifies one page of a region.
type Page struct {
	Region int
	Off    int64
}

// Pages lists every page of the peer's regions, shuffled with seed.
func (p *Peer) Pages(seed uint64) []Page {
	ps := int64(os.Getpagesize())
	var pages []Page
	for i, mem := range p.Mems {
		for off := int64(0); off < int64(len(mem)); off += ps {
			pages = append(pages, Page{Region: i, Off: off})
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	rng.Shuffle(len(pages), func(a, b int) { pages[a], pages[b] = pages[b], pages[a] })
	return pages
}

// Verify reads pages from threads goroutines, each on its own locked OS
// thread (a read of a missing page blocks that thread until the server serves
// it), and compares every byte with src, or with zeros where zero says so.
// It returns the first mismatch.
func (p *Peer) Verify(src uffd.Source, pages []Page, threads int, zero func(Page) bool) error {
	ps := int64(os.Getpagesize())
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range max(threads, 1) {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			want := make([]byte, ps)
			zeros := make([]byte, ps)
			for {
				k := int(next.Add(1) - 1)
				if k >= len(pages) {
					return
				}
				pg := pages[k]
				exp := zeros
				if zero == nil || !zero(pg) {
					if _, err := src.ReadAt(want, p.Regions[pg.Region].Offset+pg.Off); err != nil {
						setErr(&mu, &firstErr, fmt.Errorf("read image: %w", err))
						return
					}
					exp = want
				}
				got := p.Mems[pg.Region][pg.Off : pg.Off+ps]
				Touch(got)
				if !bytes.Equal(got, exp) {
					setErr(&mu, &firstErr, fmt.Errorf("region %d page at %#x (image offset %#x): content differs from the image", pg.Region, pg.Off, p.Regions[pg.Region].Offset+pg.Off))
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// sink keeps Touch's loads from being optimised away.
var sink atomic.Uint32

// Touch faults page b in with one plain load.
//
// In-process peers must fault only from ordinary Go code: a goroutine blocked
// in a fault inside an assembly routine (bytes.Equal, copy) cannot be
// preempted, so a garbage-collection stop-the-world would wait for it while
// the server's handler, back from poll, waits for the stop-the-world: a
// deadlock. A load in a Go function is an async-preemption point. Once
// touched, the page is present and any code may read it.
//
//go:noinline
func Touch(b []byte) {
	sink.Add(uint32(b[0]))
}

func setErr(mu *sync.Mutex, dst *error, err error) {
	mu.Lock()
	defer mu.Unlock()
	if *dst == nil {
		*dst = err
	}
}
