// Package uapi is Wrenn's thin binding of the Linux userfaultfd interface
// (linux/userfaultfd.h): the userfaultfd(2) syscall, the UFFDIO_* ioctls, the
// feature and mode flags and the 32-byte uffd_msg read from the descriptor.
//
// golang.org/x/sys/unix carries only SYS_USERFAULTFD, so the constants and
// struct layouts here are written from the UAPI header. Invariants: every
// struct passed to an ioctl has exactly the kernel's size and field order
// (checked by tests), and the wrappers never retry: callers decide what
// EAGAIN, EEXIST, ENOENT and ESRCH mean for them.
package uapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// API is the userfaultfd API version (UFFD_API).
const API = 0xAA

// ioctl numbers: _IOWR/_IOR(0xAA, nr, struct). Encoded as
// dir<<30 | size<<16 | type<<8 | nr.
const (
	iocWrite = 1
	iocRead  = 2
	uffdioT  = 0xAA
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | uffdioT<<8 | nr }

// Ioctl request numbers.
var (
	IoctlAPI        = ioc(iocRead|iocWrite, 0x3F, unsafe.Sizeof(apiArg{}))
	IoctlRegister   = ioc(iocRead|iocWrite, 0x00, unsafe.Sizeof(registerArg{}))
	IoctlUnregister = ioc(iocRead, 0x01, unsafe.Sizeof(rangeArg{}))
	IoctlWake       = ioc(iocRead, 0x02, unsafe.Sizeof(rangeArg{}))
	IoctlCopy       = ioc(iocRead|iocWrite, 0x03, unsafe.Sizeof(copyArg{}))
	IoctlZeroPage   = ioc(iocRead|iocWrite, 0x04, unsafe.Sizeof(zeroPageArg{}))
)

// Events (uffd_msg.event).
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// Page fault flags (uffd_msg.arg.pagefault.flags).
const (
	PagefaultFlagWrite = 1 << 0
	PagefaultFlagWP    = 1 << 1
	PagefaultFlagMinor = 1 << 2
)

// Features negotiated with UFFDIO_API.
const (
	FeaturePagefaultFlagWP  = 1 << 0
	FeatureEventFork        = 1 << 1
	FeatureEventRemap       = 1 << 2
	FeatureEventRemove      = 1 << 3
	FeatureMissingHugetlbfs = 1 << 4
	FeatureMissingShmem     = 1 << 5
	FeatureEventUnmap       = 1 << 6
	FeatureSigbus           = 1 << 7
	FeatureThreadID         = 1 << 8
	FeatureExactAddress     = 1 << 11
)

// Register modes and per-ioctl modes.
const (
	RegisterModeMissing = 1 << 0
	RegisterModeWP      = 1 << 1
	RegisterModeMinor   = 1 << 2

	CopyModeDontWake     = 1 << 0
	ZeroPageModeDontWake = 1 << 0

	// UserModeOnly is the userfaultfd(2) flag that limits the descriptor to
	// faults raised from user mode (allowed without privilege on some hosts).
	UserModeOnly = 1
)

// Bits of the ioctls mask returned by UFFDIO_REGISTER.
const (
	RangeIoctlWake     = 1 << 0x02
	RangeIoctlCopy     = 1 << 0x03
	RangeIoctlZeroPage = 1 << 0x04
)

type apiArg struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type rangeArg struct {
	Start uint64
	Len   uint64
}

type registerArg struct {
	Range  rangeArg
	Mode   uint64
	Ioctls uint64
}

type copyArg struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type zeroPageArg struct {
	Range    rangeArg
	Mode     uint64
	ZeroPage int64
}

// MsgSize is sizeof(struct uffd_msg).
const MsgSize = 32

// Msg is a decoded struct uffd_msg. Only the fields of the event kind are
// meaningful: Pagefault uses Flags, Address and PTID; Remove uses Start and
// End.
type Msg struct {
	Event   uint8
	Flags   uint64
	Address uint64
	PTID    uint32
	Start   uint64
	End     uint64
}

// ParseMsg decodes one uffd_msg from b (at least MsgSize bytes).
func ParseMsg(b []byte) (Msg, error) {
	if len(b) < MsgSize {
		return Msg{}, fmt.Errorf("uffd_msg: %d bytes, want %d", len(b), MsgSize)
	}
	m := Msg{Event: b[0]}
	switch m.Event {
	case EventPagefault:
		m.Flags = binary.NativeEndian.Uint64(b[8:])
		m.Address = binary.NativeEndian.Uint64(b[16:])
		m.PTID = binary.NativeEndian.Uint32(b[24:])
	case EventRemove, EventUnmap:
		m.Start = binary.NativeEndian.Uint64(b[8:])
		m.End = binary.NativeEndian.Uint64(b[16:])
	}
	return m, nil
}

// New creates a userfaultfd with the given open flags (O_CLOEXEC,
// O_NONBLOCK, UserModeOnly).
func New(flags int) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", errno)
	}
	return int(fd), nil
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// Handshake performs UFFDIO_API requesting features; it returns the features
// and ioctls the kernel reports.
func Handshake(fd int, features uint64) (gotFeatures, ioctls uint64, err error) {
	a := apiArg{API: API, Features: features}
	if err := ioctl(fd, IoctlAPI, unsafe.Pointer(&a)); err != nil {
		return 0, 0, fmt.Errorf("UFFDIO_API features %#x: %w", features, err)
	}
	return a.Features, a.Ioctls, nil
}

// Register registers [start, start+length) in mode and returns the mask of
// range ioctls allowed on it.
func Register(fd int, start, length, mode uint64) (uint64, error) {
	r := registerArg{Range: rangeArg{Start: start, Len: length}, Mode: mode}
	if err := ioctl(fd, IoctlRegister, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER %#x+%#x: %w", start, length, err)
	}
	return r.Ioctls, nil
}

// Unregister undoes Register for [start, start+length).
func Unregister(fd int, start, length uint64) error {
	r := rangeArg{Start: start, Len: length}
	if err := ioctl(fd, IoctlUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER %#x+%#x: %w", start, length, err)
	}
	return nil
}

// Wake wakes threads waiting on faults in [start, start+length).
func Wake(fd int, start, length uint64) error {
	r := rangeArg{Start: start, Len: length}
	if err := ioctl(fd, IoctlWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_WAKE %#x+%#x: %w", start, length, err)
	}
	return nil
}

// Copy issues UFFDIO_COPY of len(src) bytes to dst. It returns the kernel's
// copy field (bytes copied, or a negated errno) and the ioctl's errno. A
// partial copy is reported by the kernel as EAGAIN with copied > 0.
func Copy(fd int, dst uint64, src []byte, mode uint64) (copied int64, err error) {
	if len(src) == 0 {
		return 0, errors.New("UFFDIO_COPY: empty source")
	}
	c := copyArg{Dst: dst, Src: uint64(uintptr(unsafe.Pointer(&src[0]))), Len: uint64(len(src)), Mode: mode}
	err = ioctl(fd, IoctlCopy, unsafe.Pointer(&c))
	if err == nil {
		return int64(len(src)), nil
	}
	return c.Copy, err
}

// ZeroPage issues UFFDIO_ZEROPAGE on [dst, dst+length); results as for Copy.
func ZeroPage(fd int, dst, length, mode uint64) (zeroed int64, err error) {
	z := zeroPageArg{Range: rangeArg{Start: dst, Len: length}, Mode: mode}
	err = ioctl(fd, IoctlZeroPage, unsafe.Pointer(&z))
	if err == nil {
		return int64(length), nil
	}
	return z.ZeroPage, err
}
