package fcsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uapi"
)

const pageSize = 4096

var sink atomic.Uint32

// touch faults a page in with one plain load: with the Uffd handler in
// the same process (tests), a fault inside an assembly routine (copy)
// could not be preempted by a stop-the-world the handler waits for.
//
//go:noinline
func touch(b []byte) { sink.Add(uint32(b[0])) }

// userModeOnly is UFFD_USER_MODE_ONLY: without CAP_SYS_PTRACE (a jailed,
// unprivileged simulator) and vm.unprivileged_userfaultfd=0 the kernel only
// grants a userfaultfd that handles user-mode faults. The simulator only
// touches guest memory from user mode (copies through a buffer), so it
// works either way.
const userModeOnly = 1

// guestMemory is the simulated guest RAM: an anonymous mapping, the pages
// the simulator wrote since the last snapshot, and, after a snapshot load
// with a Uffd backend, the userfaultfd and the handler connection.
type guestMemory struct {
	mem   []byte
	dirty []bool
	uffd  int
	conn  *net.UnixConn
}

func newGuestMemory(size int64) (*guestMemory, error) {
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	return &guestMemory{mem: b, dirty: make([]bool, size/pageSize), uffd: -1}, nil
}

func (g *guestMemory) close() {
	if g.conn != nil {
		_ = g.conn.Close()
	}
	if g.uffd >= 0 {
		_ = unix.Close(g.uffd)
	}
	_ = unix.Munmap(g.mem)
}

func (g *guestMemory) pages() int { return len(g.mem) / pageSize }

// write fills the pages w selects (plain Go stores: user-mode faults).
func (g *guestMemory) write(w *Writes) {
	if w == nil {
		return
	}
	for i := 0; i < g.pages(); i++ {
		if !w.Has(i) {
			continue
		}
		b := PageByte(w.Seed, i)
		p := g.mem[i*pageSize : (i+1)*pageSize]
		for j := range p {
			p[j] = b
		}
		g.dirty[i] = true
	}
}

// discard drops the guest pages in [fromMiB, toMiB) as Firecracker does
// for pages the balloon took (MADV_DONTNEED: a Uffd handler sees REMOVE).
func (g *guestMemory) discard(fromMiB, toMiB int64) error {
	if toMiB <= fromMiB {
		return nil
	}
	return unix.Madvise(g.mem[fromMiB<<20:toMiB<<20], unix.MADV_DONTNEED)
}

// dump writes guest memory to path: every non-zero page (full), or only
// the dirty pages (diff). Pages are copied through a buffer, so a page
// served by a Uffd handler faults in user mode.
func (g *guestMemory) dump(path string, diff bool) error {
	flags := os.O_WRONLY | os.O_CREATE
	if !diff {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(len(g.mem))); err != nil {
		_ = f.Close()
		return err
	}
	buf := make([]byte, pageSize)
	zero := make([]byte, pageSize)
	for i := 0; i < g.pages(); i++ {
		if diff && !g.dirty[i] {
			continue
		}
		touch(g.mem[i*pageSize:])
		copy(buf, g.mem[i*pageSize:(i+1)*pageSize])
		if !diff && string(buf) == string(zero) {
			continue
		}
		if _, err := f.WriteAt(buf, int64(i)*pageSize); err != nil {
			_ = f.Close()
			return err
		}
	}
	for i := range g.dirty {
		g.dirty[i] = false
	}
	return f.Close()
}

// vmstate is the simulator's microVM state file. It is not Firecracker's
// format (which is a versioned binary); it carries what a load checks.
type vmstate struct {
	Magic    string                    `json:"magic"`
	Version  string                    `json:"firecracker_version"`
	Machine  map[string]any            `json:"machine_config"`
	Drives   map[string]map[string]any `json:"drives"`
	Ifaces   map[string]map[string]any `json:"network_interfaces"`
	Balloon  map[string]any            `json:"balloon,omitempty"`
	Vsock    map[string]any            `json:"vsock,omitempty"`
	MmdsCfg  map[string]any            `json:"mmds_config,omitempty"`
	BalloonM int64                     `json:"balloon_mib"`
}

const stateMagic = "fcsim-vmstate-v1"

// dataVersion is the snapshot data format a Firecracker version writes:
// the simulator ties it to major.minor (Firecracker refuses snapshots of
// another format version).
func dataVersion(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

func (s *Server) snapshotCreate(body []byte) *fault {
	m, err := decode(body, snapshotCreate)
	if err != nil {
		return badRequest("%v", err)
	}
	if f := s.postBoot(); f != nil {
		return f
	}
	if !s.vm.paused {
		return badRequest("Cannot create a snapshot: the microVM is not paused.")
	}
	diff := str(m, "snapshot_type") == "Diff"
	if diff && !s.vm.track {
		return badRequest("Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")
	}
	st := vmstate{
		Magic: stateMagic, Version: s.opts.Version, Machine: s.machineConfig(),
		Drives: s.vm.drives, Ifaces: s.vm.ifaces, Balloon: s.vm.balloon, Vsock: s.vm.vsock,
		MmdsCfg: s.vm.mmdsCfg, BalloonM: s.vm.balloonMiB,
	}
	b, err := json.Marshal(st)
	if err != nil {
		return &fault{http.StatusInternalServerError, err.Error()}
	}
	if err := os.WriteFile(str(m, "snapshot_path"), b, 0o600); err != nil {
		return badRequest("Cannot save the microVM state: %v", err)
	}
	if err := s.mem.dump(str(m, "mem_file_path"), diff); err != nil {
		return badRequest("Cannot save the guest memory: %v", err)
	}
	return nil
}

func (s *Server) snapshotLoad(body []byte) *fault {
	m, err := decode(body, snapshotLoad)
	if err != nil {
		return badRequest("%v", err)
	}
	if s.vm.started || s.vm.configured {
		return badRequest(msgLoadFresh)
	}
	be := obj(m, "mem_backend")
	if (be == nil) == (str(m, "mem_file_path") == "") {
		return badRequest("Exactly one of mem_file_path and mem_backend must be set.")
	}
	raw, err := os.ReadFile(str(m, "snapshot_path"))
	if err != nil {
		return badRequest("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: %v", err)
	}
	var st vmstate
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&st); err != nil || st.Magic != stateMagic {
		return badRequest("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: the file is not a microVM state")
	}
	if dataVersion(st.Version) != dataVersion(s.opts.Version) {
		return badRequest("Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Invalid data version: the snapshot was made by Firecracker v%s (snapshot data format v%s), this is v%s (format v%s)",
			st.Version, dataVersion(st.Version), s.opts.Version, dataVersion(s.opts.Version))
	}
	ifaces := map[string]map[string]any{}
	for id, i := range st.Ifaces {
		ifaces[id] = cloneMap(i)
	}
	ovr, _ := m["network_overrides"].([]any)
	for _, o := range ovr {
		om := o.(map[string]any)
		i := ifaces[str(om, "iface_id")]
		if i == nil {
			return badRequest("Load snapshot error: Invalid network configuration: network interface %s is not in the snapshot", str(om, "iface_id"))
		}
		i["host_dev_name"] = om["host_dev_name"]
	}
	for id, d := range st.Drives {
		if err := fileExists(str(d, "path_on_host")); err != nil {
			return badRequest("Load snapshot error: Failed to restore from snapshot: Failed to restore block device %s: %v", id, err)
		}
	}
	size := uint64v(st.Machine, "mem_size_mib") << 20
	mem, err := newGuestMemory(size)
	if err != nil {
		return &fault{http.StatusInternalServerError, err.Error()}
	}
	if be != nil && str(be, "backend_type") == "Uffd" {
		err = mem.connectUffd(str(be, "backend_path"))
	} else {
		p := str(m, "mem_file_path")
		if be != nil {
			p = str(be, "backend_path")
		}
		err = mem.loadFile(p)
	}
	if err != nil {
		mem.close()
		return badRequest("Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: %v", err)
	}
	s.mem = mem
	s.vm.machine, s.vm.machineSet = st.Machine, true
	s.vm.drives, s.vm.ifaces, s.vm.balloon, s.vm.mmdsCfg, s.vm.balloonMiB = st.Drives, ifaces, st.Balloon, st.MmdsCfg, st.BalloonM
	if st.Vsock != nil {
		v := cloneMap(st.Vsock)
		if vo := obj(m, "vsock_override"); vo != nil {
			v["uds_path"] = vo["uds_path"]
		}
		ln, err := net.Listen("unix", str(v, "uds_path"))
		if err != nil {
			mem.close()
			s.mem = nil
			return badRequest("Load snapshot error: Failed to restore from snapshot: vsock: %v", err)
		}
		s.vm.vsock, s.vm.vsockLn = v, ln
	}
	s.vm.track = boolean(m, "track_dirty_pages") || boolean(m, "enable_diff_snapshots")
	s.vm.started, s.vm.loaded, s.vm.paused = true, true, !boolean(m, "resume_vm")
	if !s.vm.paused {
		s.vm.resumed = true
		s.mem.write(s.opts.WriteOnResume)
	}
	return nil
}

// loadFile maps the memory file privately over guest memory (File backend).
func (g *guestMemory) loadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != int64(len(g.mem)) {
		return fmt.Errorf("memory file %s holds %d bytes, the snapshot's guest has %d", path, st.Size(), len(g.mem))
	}
	_, err = unix.MmapPtr(int(f.Fd()), 0, unsafe.Pointer(&g.mem[0]), uintptr(len(g.mem)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
	return err
}

// connectUffd registers guest memory with a new userfaultfd and hands it,
// with the region list, to the handler listening at path: Firecracker's
// UFFD handshake (one message, SCM_RIGHTS plus a JSON array).
func (g *guestMemory) connectUffd(path string) error {
	flags := unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := uapi.New(flags)
	if errors.Is(err, unix.EPERM) {
		fd, err = uapi.New(flags | userModeOnly)
	}
	if err != nil {
		return err
	}
	g.uffd = fd
	if _, _, err := uapi.Handshake(fd, uapi.FeatureEventRemove); err != nil {
		return err
	}
	base := uint64(uintptr(unsafe.Pointer(&g.mem[0])))
	if _, err := uapi.Register(fd, base, uint64(len(g.mem)), uapi.RegisterModeMissing); err != nil {
		return err
	}
	body, err := json.Marshal([]uffd.Mapping{{
		BaseHostVirtAddr: base, Size: uint64(len(g.mem)), Offset: 0,
		PageSize: pageSize, PageSizeKiB: pageSize,
	}})
	if err != nil {
		return err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("cannot connect to the UFFD handler socket %s: %w", path, err)
	}
	if _, _, err := conn.WriteMsgUnix(body, unix.UnixRights(fd), nil); err != nil {
		_ = conn.Close()
		return fmt.Errorf("cannot send the userfaultfd to the handler: %w", err)
	}
	g.conn = conn
	return nil
}
