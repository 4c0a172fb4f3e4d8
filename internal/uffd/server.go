package uffd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/uffd/uapi"
)

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("uffd: server closed")

// Config configures a Server.
type Config struct {
	// Source is the memory image served to the guest. Required.
	Source Source
	// Logger receives debug and error logs; nil discards them.
	Logger *slog.Logger
	// HandshakeTimeout bounds the wait for the peer's userfaultfd and
	// mappings once it has connected. Default 10 s.
	HandshakeTimeout time.Duration
	// DisablePrefetch turns background prefetch off: pages are only loaded
	// when the guest faults on them.
	DisablePrefetch bool
	// PrefetchDelay: prefetch starts when the first fault has been served,
	// or this long after the handshake if no fault came. Default 50 ms.
	PrefetchDelay time.Duration
	// PrefetchWorkers is the number of prefetch goroutines. Default 1.
	PrefetchWorkers int
	// PrefetchChunk is the most bytes one prefetch ioctl populates.
	// Default 256 KiB (rounded up to a whole page).
	PrefetchChunk int64
}

// Stats is a snapshot of a Server's counters.
type Stats struct {
	// Pages is the number of pages over all mappings (0 before handshake).
	Pages int
	// PresentPages were populated by this server (fault or prefetch).
	PresentPages int
	// RemovedPages were removed by the peer (balloon inflation); faults
	// there are served with zero pages from then on.
	RemovedPages int
	// Faults is the number of page faults served.
	Faults uint64
	// ZeroFaults of them were served with zero pages.
	ZeroFaults uint64
	// PrefetchedPages were populated by the prefetcher.
	PrefetchedPages uint64
	// Retries counts EAGAIN retries (peer's mappings were changing).
	Retries uint64
	// TimeToFirstFault is from handshake to the first fault served.
	TimeToFirstFault time.Duration
	// TimeToFullPrefetch is from handshake to the end of prefetch.
	TimeToFullPrefetch time.Duration
	// PrefetchDone reports that every page has been prefetched.
	PrefetchDone bool
}

// Server serves one peer's page faults from a Source.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ln   *net.UnixListener
	wake int // eventfd written by Close and by ctx cancellation

	mu      sync.Mutex
	closed  bool
	serving bool
	conn    *net.UnixConn // the peer, once accepted
	regions []*region     // set once at handshake, under mu

	done          chan struct{} // closed when Serve returns
	ready         chan struct{} // closed after the handshake
	prefetchDone  chan struct{}
	startPrefetch chan struct{}
	startOnce     sync.Once

	// removeMu: write-locked around read(uffd) + recording removals,
	// read-locked around each prefetch copy (see package invariants).
	removeMu sync.RWMutex

	orderMu sync.Mutex
	order   []int64

	start        time.Time
	firstFaultNs atomic.Int64
	prefetchNs   atomic.Int64
	faults       atomic.Uint64
	zeroFaults   atomic.Uint64
	prefetched   atomic.Uint64
	retries      atomic.Uint64

	sysPage uint64
	zeroBuf []byte // zeros, at least one prefetch chunk and one page
}

type region struct {
	Mapping
	ps      uint64
	pages   int
	present *bitmap
	removed *bitmap
}

func (r *region) addr(i int) uint64 { return r.BaseHostVirtAddr + uint64(i)*r.ps }

func (r *region) imageOff(i int) int64 { return int64(r.Offset + uint64(i)*r.ps) }

// Listen creates the unix socket at path (replacing a stale socket file) and
// returns a Server ready to Serve one peer.
func Listen(path string, cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("uffd listen: no source")
	}
	if bs := cfg.Source.BlockSize(); bs <= 0 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("uffd listen: source block size %d is not a power of two", bs)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.PrefetchDelay <= 0 {
		cfg.PrefetchDelay = 50 * time.Millisecond
	}
	if cfg.PrefetchWorkers <= 0 {
		cfg.PrefetchWorkers = 1
	}
	if cfg.PrefetchChunk <= 0 {
		cfg.PrefetchChunk = 256 << 10
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("uffd listen: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uffd listen: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("uffd listen: eventfd: %w", err)
	}
	return &Server{
		cfg:           cfg,
		log:           cfg.Logger,
		ln:            ln,
		wake:          wake,
		done:          make(chan struct{}),
		ready:         make(chan struct{}),
		prefetchDone:  make(chan struct{}),
		startPrefetch: make(chan struct{}),
		sysPage:       uint64(os.Getpagesize()),
	}, nil
}

// Addr is the socket path the peer connects to.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Ready is closed once the peer's userfaultfd and mappings are received.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// PrefetchDone is closed when every page has been prefetched.
func (s *Server) PrefetchDone() <-chan struct{} { return s.prefetchDone }

// Close stops the server: Serve returns ErrClosed, the socket is removed and
// every goroutine and descriptor of the server is released before Close
// returns. A peer still faulting then hangs (the kernel keeps its threads
// waiting), so callers close the server only once the peer is gone or being
// torn down. Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		serving := s.serving
		s.mu.Unlock()
		if serving {
			<-s.done
		}
		return nil
	}
	s.closed = true
	serving := s.serving
	s.mu.Unlock()
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	s.interrupt()
	if serving {
		<-s.done
	}
	if cerr := unix.Close(s.wake); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("uffd close: %w", err)
	}
	return nil
}

// interrupt makes a running Serve stop: it unblocks Accept, a pending
// handshake read and the fault loop's poll.
func (s *Server) interrupt() {
	_ = s.ln.Close()
	s.mu.Lock()
	if s.conn != nil {
		_ = s.conn.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(s.wake, one[:])
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	regions := s.regions
	s.mu.Unlock()
	st := Stats{
		Faults:          s.faults.Load(),
		ZeroFaults:      s.zeroFaults.Load(),
		PrefetchedPages: s.prefetched.Load(),
		Retries:         s.retries.Load(),
	}
	for _, r := range regions {
		st.Pages += r.pages
		st.PresentPages += r.present.count()
		st.RemovedPages += r.removed.count()
	}
	if ns := s.firstFaultNs.Load(); ns > 0 {
		st.TimeToFirstFault = time.Duration(ns)
	}
	if ns := s.prefetchNs.Load(); ns > 0 {
		st.TimeToFullPrefetch = time.Duration(ns)
		st.PrefetchDone = true
	}
	return st
}

// AccessOrder returns the image offsets of the pages the guest faulted in,
// in the order the faults were served (each page once; pages the prefetcher
// loaded first and zero pages handed out after a balloon removal are not
// listed). Stored with the next
// snapshot and handed back through WithPrefetchOrder, it makes the next
// resume prefetch the working set first.
func (s *Server) AccessOrder() []int64 {
	s.orderMu.Lock()
	defer s.orderMu.Unlock()
	return append([]int64(nil), s.order...)
}

// Serve accepts one peer, takes its userfaultfd and mappings and serves its
// faults until the peer exits (returns nil), Close is called (ErrClosed) or
// ctx ends (ctx.Err()). It returns an error for a bad handshake or a failure
// that leaves the peer unable to continue (e.g. the source cannot be read).
// Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.serving {
		s.mu.Unlock()
		return errors.New("uffd serve: already serving")
	}
	s.serving = true
	s.mu.Unlock()
	defer close(s.done)

	// Cancellation watcher: turns ctx.Done into a listener close and a wake.
	watchStop := make(chan struct{})
	var watchWG sync.WaitGroup
	watchWG.Go(func() {
		select {
		case <-ctx.Done():
			s.interrupt()
		case <-watchStop:
		}
	})
	defer func() {
		close(watchStop)
		watchWG.Wait()
	}()

	err := s.serve(ctx)
	switch {
	case err == nil:
		return nil
	case s.isClosed():
		return ErrClosed
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

var (
	errStopped     = errors.New("stopped")
	errPeerGone    = errors.New("peer gone")
	errMapChanging = errors.New("mappings changing")
	errUnmapped    = errors.New("range not registered")
)

func (s *Server) serve(ctx context.Context) error {
	conn, err := s.ln.AcceptUnix()
	if err != nil {
		return fmt.Errorf("uffd accept: %w", err)
	}
	_ = s.ln.Close() // one peer per server
	defer conn.Close()
	s.mu.Lock()
	s.conn = conn
	stopped := s.closed || ctx.Err() != nil
	s.mu.Unlock()
	if stopped {
		return errStopped
	}

	uffd, mappings, err := s.handshake(conn)
	if err != nil {
		return err
	}
	defer unix.Close(uffd)

	var connFd int
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("uffd: peer socket: %w", err)
	}
	if err := raw.Control(func(fd uintptr) { connFd = int(fd) }); err != nil {
		return fmt.Errorf("uffd: peer socket: %w", err)
	}
	pidfd := -1
	if cred, err := unix.GetsockoptUcred(connFd, unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil && int(cred.Pid) != os.Getpid() && cred.Pid > 0 {
		if fd, err := unix.PidfdOpen(int(cred.Pid), unix.PIDFD_NONBLOCK); err == nil {
			pidfd = fd
			defer unix.Close(pidfd)
		} else {
			s.log.Debug("uffd: pidfd_open of peer failed; watching the socket only", "pid", cred.Pid, "err", err)
		}
	}

	s.setup(mappings)
	s.log.Debug("uffd: peer connected", "mappings", len(mappings), "pages", s.Stats().Pages)
	close(s.ready)

	pctx, cancel := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	if !s.cfg.DisablePrefetch {
		pwg.Go(func() { s.prefetch(pctx, uffd) })
	}
	err = s.handle(uffd, connFd, pidfd)
	cancel()
	pwg.Wait()
	switch {
	case errors.Is(err, errPeerGone):
		s.log.Debug("uffd: peer gone", "stats", s.Stats())
		return nil
	case errors.Is(err, errStopped):
		return errStopped
	}
	return err
}

// handshake reads the peer's message: JSON mappings plus the userfaultfd.
func (s *Server) handshake(conn *net.UnixConn) (uffd int, ms []Mapping, err error) {
	uffd = -1
	defer func() {
		if err != nil && uffd >= 0 {
			_ = unix.Close(uffd)
			uffd = -1
		}
	}()
	if err := conn.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout)); err != nil {
		return uffd, nil, fmt.Errorf("uffd handshake: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(8*4))
	var body []byte
	for uffd < 0 || !json.Valid(body) {
		n, oobn, flags, _, rerr := conn.ReadMsgUnix(buf, oob)
		if rerr == nil && oobn > 0 {
			scms, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return uffd, nil, fmt.Errorf("uffd handshake: control message: %w", perr)
			}
			for i := range scms {
				fds, ferr := unix.ParseUnixRights(&scms[i])
				if ferr != nil {
					continue
				}
				for _, fd := range fds {
					if uffd < 0 {
						uffd = fd
					} else {
						_ = unix.Close(fd)
					}
				}
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return uffd, nil, errors.New("uffd handshake: control message truncated")
		}
		if n > 0 {
			body = append(body, buf[:n]...)
		}
		if errors.Is(rerr, io.EOF) || (rerr == nil && n == 0 && oobn == 0) {
			return uffd, nil, fmt.Errorf("uffd handshake: peer closed before sending its userfaultfd and mappings (got %d bytes, fd %v)", len(body), uffd >= 0)
		}
		if rerr != nil {
			return uffd, nil, fmt.Errorf("uffd handshake: read (got %d bytes, fd %v): %w", len(body), uffd >= 0, rerr)
		}
		if len(body) > 1<<20 {
			return uffd, nil, errors.New("uffd handshake: mappings message larger than 1 MiB")
		}
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return uffd, nil, fmt.Errorf("uffd handshake: %w", err)
	}
	if link, lerr := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", uffd)); lerr != nil || !strings.Contains(link, "userfaultfd") {
		return uffd, nil, fmt.Errorf("uffd handshake: received fd is not a userfaultfd (%q)", link)
	}
	unix.CloseOnExec(uffd)
	if err := unix.SetNonblock(uffd, true); err != nil {
		return uffd, nil, fmt.Errorf("uffd handshake: set nonblocking: %w", err)
	}
	ms, err = ParseMappings(body, s.cfg.Source.Size())
	if err != nil {
		return uffd, nil, fmt.Errorf("uffd handshake: %w", err)
	}
	return uffd, ms, nil
}

func (s *Server) setup(ms []Mapping) {
	regions := make([]*region, len(ms))
	maxPS := uint64(0)
	for i, m := range ms {
		ps := m.PageSize
		maxPS = max(maxPS, ps)
		pages := int(m.Size / ps)
		regions[i] = &region{Mapping: m, ps: ps, pages: pages, present: newBitmap(pages), removed: newBitmap(pages)}
	}
	chunk := uint64(s.cfg.PrefetchChunk)
	chunk = max(chunk, maxPS)
	s.zeroBuf = make([]byte, chunk)
	s.start = time.Now()
	s.mu.Lock()
	s.regions = regions
	s.mu.Unlock()
}

// regionFor finds the region holding host address addr (regions are sorted
// by address).
func (s *Server) regionFor(addr uint64) *region {
	i := sort.Search(len(s.regions), func(i int) bool {
		r := s.regions[i]
		return r.BaseHostVirtAddr+r.Size > addr
	})
	if i < len(s.regions) && s.regions[i].BaseHostVirtAddr <= addr {
		return s.regions[i]
	}
	return nil
}

// pageZero reports whether page i of r is all zeros in the image.
func (s *Server) pageZero(r *region, i int) bool {
	bs := s.cfg.Source.BlockSize()
	off := r.imageOff(i)
	end := off + int64(r.ps)
	for b := off; b < end; b += bs {
		if !s.cfg.Source.IsZero(b) {
			return false
		}
	}
	return true
}

// populate fills pages [i, j) of r with data (page i first) or with zeros,
// continuing past pages that are already present (EEXIST). It returns how
// many pages from i were dealt with and how many of them it copied; err is
// errMapChanging, errPeerGone, errUnmapped or a failure.
func (s *Server) populate(uffd int, r *region, i, j int, zero bool, data []byte) (done, copied int, err error) {
	i0 := i
	for i < j {
		dst := r.addr(i)
		length := uint64(j-i) * r.ps
		var res int64
		var e error
		switch {
		case zero && r.ps == s.sysPage:
			res, e = uapi.ZeroPage(uffd, dst, length, 0)
		case zero:
			// hugetlbfs has no UFFDIO_ZEROPAGE: copy zeros instead.
			length = min(length, uint64(len(s.zeroBuf))/r.ps*r.ps)
			res, e = uapi.Copy(uffd, dst, s.zeroBuf[:length], 0)
		default:
			off := uint64(i-i0) * r.ps
			res, e = uapi.Copy(uffd, dst, data[off:off+length], 0)
		}
		switch {
		case e == nil:
			n := int(uint64(res) / r.ps)
			r.present.setRange(i, i+n)
			copied += n
			i += n
		case errors.Is(e, unix.EAGAIN) && res > 0:
			n := int(uint64(res) / r.ps)
			r.present.setRange(i, i+n)
			copied += n
			i += n
		case errors.Is(e, unix.EEXIST) || res == -int64(unix.EEXIST):
			r.present.set(i)
			i++
		case errors.Is(e, unix.EAGAIN):
			return i - i0, copied, errMapChanging
		case errors.Is(e, unix.ESRCH):
			return i - i0, copied, errPeerGone
		case errors.Is(e, unix.ENOENT):
			return i - i0, copied, errUnmapped
		default:
			return i - i0, copied, fmt.Errorf("uffd populate %#x+%#x: %w", dst, length, e)
		}
	}
	return i - i0, copied, nil
}
