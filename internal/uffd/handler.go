package uffd

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/uffd/uapi"
)

// msgBatch is how many uffd messages one read() takes.
const msgBatch = 64

// handle is the fault loop. It runs on a locked OS thread that never touches
// the registered memory, and returns errPeerGone, errStopped or a failure.
func (s *Server) handle(uffd, connFd, pidfd int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	fds := []unix.PollFd{
		{Fd: int32(uffd), Events: unix.POLLIN},
		{Fd: int32(s.wake), Events: unix.POLLIN},
		{Fd: int32(connFd), Events: unix.POLLIN | unix.POLLRDHUP},
	}
	if pidfd >= 0 {
		fds = append(fds, unix.PollFd{Fd: int32(pidfd), Events: unix.POLLIN})
	}
	msgs := make([]byte, uapi.MsgSize*msgBatch)
	var maxPS uint64
	for _, r := range s.regions {
		maxPS = max(maxPS, r.ps)
	}
	page := make([]byte, maxPS)
	var faults, pending []uint64
	for {
		timeout := -1
		if len(pending) > 0 {
			timeout = 1 // EAGAIN: the kernel finishes the mapping change shortly
		}
		if _, err := unix.Poll(fds, timeout); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("uffd poll: %w", err)
		}
		if fds[1].Revents != 0 {
			return errStopped
		}
		if len(fds) > 3 && fds[3].Revents != 0 {
			return errPeerGone
		}
		if re := fds[2].Revents; re != 0 {
			if re&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				return errPeerGone
			}
			var junk [512]byte
			n, err := unix.Read(connFd, junk[:])
			if n == 0 && err == nil {
				return errPeerGone
			}
			if n > 0 {
				s.log.Debug("uffd: ignoring unexpected bytes from peer", "bytes", n)
			}
		}
		if re := fds[0].Revents; re&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("uffd: poll reports error on userfaultfd (revents %#x)", re)
		}
		faults = append(faults[:0], pending...)
		pending = pending[:0]
		if fds[0].Revents&unix.POLLIN != 0 {
			var err error
			if faults, err = s.readEvents(uffd, msgs, faults); err != nil {
				return err
			}
		}
		for _, addr := range faults {
			retry, err := s.serveFault(uffd, addr, page)
			if err != nil {
				return err
			}
			if retry {
				s.retries.Add(1)
				pending = append(pending, addr)
			}
		}
	}
}

// readEvents drains the userfaultfd. Removals are recorded while removeMu is
// write-locked, in the same critical section as the read that consumed them;
// page fault addresses are appended to faults for the caller to serve.
func (s *Server) readEvents(uffd int, buf []byte, faults []uint64) ([]uint64, error) {
	for {
		s.removeMu.Lock()
		n, err := unix.Read(uffd, buf)
		if err == nil {
			for off := 0; off+uapi.MsgSize <= n; off += uapi.MsgSize {
				m, perr := uapi.ParseMsg(buf[off : off+uapi.MsgSize])
				if perr != nil {
					continue
				}
				switch m.Event {
				case uapi.EventPagefault:
					faults = append(faults, m.Address)
				case uapi.EventRemove:
					s.markRemoved(m.Start, m.End)
				default:
					s.log.Debug("uffd: ignoring event", "event", m.Event)
				}
			}
		}
		s.removeMu.Unlock()
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			return faults, nil
		case err != nil:
			return faults, fmt.Errorf("uffd read: %w", err)
		case n < len(buf):
			return faults, nil
		}
	}
}

// markRemoved records that [start, end) was dropped by the peer: those pages
// are missing again and must come back as zeros. Only pages entirely inside
// the range are marked.
func (s *Server) markRemoved(start, end uint64) {
	for _, r := range s.regions {
		lo := max(start, r.BaseHostVirtAddr)
		hi := min(end, r.BaseHostVirtAddr+r.Size)
		if lo >= hi {
			continue
		}
		first := int((lo - r.BaseHostVirtAddr + r.ps - 1) / r.ps)
		last := int((hi - r.BaseHostVirtAddr) / r.ps)
		for i := first; i < last; i++ {
			r.removed.set(i)
			r.present.clear(i)
		}
	}
}

// serveFault populates the page holding addr. retry means the peer's
// mappings are changing (EAGAIN) and the fault must be served again after
// the pending events are read.
func (s *Server) serveFault(uffd int, addr uint64, buf []byte) (retry bool, err error) {
	r := s.regionFor(addr)
	if r == nil {
		return false, fmt.Errorf("uffd: fault at %#x outside every mapping", addr)
	}
	i := int((addr - r.BaseHostVirtAddr) / r.ps)
	removed := r.removed.get(i)
	zero := removed || s.pageZero(r, i)
	data := buf[:r.ps]
	if !zero {
		if _, err := s.cfg.Source.ReadAt(data, r.imageOff(i)); err != nil {
			return false, fmt.Errorf("uffd: read image at %d for fault at %#x: %w", r.imageOff(i), addr, err)
		}
	}
	_, copied, err := s.populate(uffd, r, i, i+1, zero, data)
	switch {
	case errors.Is(err, errMapChanging):
		return true, nil
	case errors.Is(err, errUnmapped):
		s.log.Debug("uffd: fault on a range no longer registered", "addr", addr)
		return false, nil
	case err != nil:
		return false, err
	}
	if copied == 0 {
		// Populated concurrently (prefetch): make sure the faulting thread
		// is not left waiting.
		if werr := uapi.Wake(uffd, r.addr(i), r.ps); werr != nil && !errors.Is(werr, unix.ENOENT) {
			return false, werr
		}
	}
	if s.faults.Add(1) == 1 {
		s.firstFaultNs.Store(int64(max(time.Since(s.start), 1)))
		s.startOnce.Do(func() { close(s.startPrefetch) })
	}
	if zero {
		s.zeroFaults.Add(1)
	}
	if !removed && copied > 0 {
		s.orderMu.Lock()
		s.order = append(s.order, r.imageOff(i))
		s.orderMu.Unlock()
	}
	return false, nil
}
