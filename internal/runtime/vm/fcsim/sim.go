// Package fcsim simulates Firecracker's API for tests: a process (or an
// in-process server) that listens on the API Unix socket, validates every
// request body against the documented schemas (types, required fields,
// enums, ranges, unknown fields), models the microVM's state machine
// (pre-boot only, post-boot only, paused, snapshot load only on a fresh
// process, once-only calls) and answers with Firecracker's status codes and
// {"fault_message": ...} bodies. It drives the userfaultfd handshake of a
// snapshot load with mem_backend Uffd exactly as Firecracker does: it
// creates a userfaultfd, registers guest memory in MISSING mode and sends
// the descriptor with a JSON array of regions over the handler's socket.
//
// No guest runs. Guest memory is an anonymous mapping of the configured
// size that only the simulator writes: on InstanceStart and on the first
// resume after a snapshot load it writes pages chosen by Options (stand-ins
// for the guest's writes, so that full and diff snapshots and lazy restore
// can be checked byte for byte), and balloon inflation drops the top pages
// with MADV_DONTNEED as Firecracker does. Nothing that needs a guest to
// execute (booting the kernel, the guest seeing MMDS, its network, vsock)
// is simulated; docs/FIRECRACKER.md lists what is checked here and what
// only a real Firecracker can show.
package fcsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultVersion is the Firecracker version the simulator reports.
const DefaultVersion = "1.10.1"

// MaxPayload is Firecracker's default limit on a request body
// (--http-api-max-payload-size).
const MaxPayload = 51200

// MmdsLimit is Firecracker's default MMDS data store limit
// (--mmds-size-limit, default the payload limit).
const MmdsLimit = 51200

// Writes selects pages the simulator writes as a guest would: page i with
// i%Stride == Offset is filled with PageByte(Seed, i).
type Writes struct {
	Seed   byte
	Stride int
	Offset int
}

// Has reports whether w writes page i.
func (w *Writes) Has(i int) bool { return w != nil && w.Stride > 0 && i%w.Stride == w.Offset }

// PageByte is the byte that fills page i written with seed (never 0).
func PageByte(seed byte, i int) byte {
	b := byte(i*7) + seed
	if b == 0 {
		b = 1
	}
	return b
}

// ParseWrites parses "seed,stride,offset" (FCSIM_WRITE_ON_START,
// FCSIM_WRITE_ON_RESUME); "" is nil.
func ParseWrites(s string) (*Writes, error) {
	if s == "" {
		return nil, nil
	}
	var w Writes
	if _, err := fmt.Sscanf(s, "%d,%d,%d", &w.Seed, &w.Stride, &w.Offset); err != nil || w.Stride <= 0 || w.Offset < 0 || w.Offset >= w.Stride {
		return nil, fmt.Errorf("fcsim: bad page writes %q (want seed,stride,offset with 0 <= offset < stride)", s)
	}
	return &w, nil
}

// Options configures a simulated Firecracker process.
type Options struct {
	// ID is the instance id (--id); default "anonymous-instance".
	ID string
	// Version is the Firecracker version reported and written into
	// snapshots (default DefaultVersion).
	Version string
	// WriteOnStart and WriteOnResume stand in for guest writes at
	// InstanceStart and at the first resume after a snapshot load.
	WriteOnStart, WriteOnResume *Writes
	// Logger; nil discards.
	Logger *slog.Logger
	// Exit is called when the VMM would exit (SendCtrlAltDel: the guest
	// reboots and Firecracker exits). Nil: nothing happens.
	Exit func(code int)
}

// Server is one simulated Firecracker API.
type Server struct {
	opts Options
	log  *slog.Logger
	srv  *http.Server
	ln   net.Listener

	mu  sync.Mutex
	vm  vmState
	mem *guestMemory
}

type vmState struct {
	configured bool // a resource other than logger/metrics was set
	started    bool // InstanceStart done or a snapshot loaded
	paused     bool
	loaded     bool // started from a snapshot
	resumed    bool // resumed once after the load
	loggerSet  bool
	metricsSet bool

	machine    map[string]any
	machineSet bool
	boot       map[string]any
	drives     map[string]map[string]any
	ifaces     map[string]map[string]any
	vsock      map[string]any
	vsockLn    net.Listener
	balloon    map[string]any
	mmdsCfg    map[string]any
	mmds       map[string]any
	track      bool
	balloonMiB int64
}

// Listen creates the API socket at path; Serve answers on it. Like
// Firecracker, it fails if the path already exists.
func Listen(path string, opts Options) (*Server, error) {
	if opts.ID == "" {
		opts.ID = "anonymous-instance"
	}
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("failed to open the API socket at %s: %w", path, err)
	}
	s := &Server{opts: opts, log: opts.Logger, ln: ln}
	s.vm.drives = map[string]map[string]any{}
	s.vm.ifaces = map[string]map[string]any{}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Serve answers API requests until Close.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the API, releases guest memory, the userfaultfd connection
// and the vsock socket.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vm.vsockLn != nil {
		_ = s.vm.vsockLn.Close()
		s.vm.vsockLn = nil
	}
	if s.mem != nil {
		s.mem.close()
		s.mem = nil
	}
	return err
}

// fault is an API error: status and fault_message.
type fault struct {
	status int
	msg    string
}

func (f *fault) Error() string { return f.msg }

func badRequest(format string, a ...any) *fault {
	return &fault{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

const (
	msgAfterStart  = "The requested operation is not supported after starting the microVM."
	msgBeforeStart = "The requested operation is not supported before starting the microVM."
	msgLoadFresh   = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)

// ServeHTTP implements http.Handler: every route of Firecracker's API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxPayload+1))
	if err != nil {
		writeFault(w, badRequest("failed to read the request: %v", err))
		return
	}
	if len(body) > MaxPayload {
		writeFault(w, badRequest("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, MaxPayload))
		return
	}
	s.mu.Lock()
	out, f := s.route(r.Method, r.URL.Path, body)
	s.mu.Unlock()
	s.log.Debug("api", "method", r.Method, "path", r.URL.Path, "fault", f)
	if f != nil {
		writeFault(w, f)
		return
	}
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func writeFault(w http.ResponseWriter, f *fault) {
	b, _ := json.Marshal(map[string]string{"fault_message": f.msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	_, _ = w.Write(b)
}

func (s *Server) route(method, path string, body []byte) (any, *fault) {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	key := method + " /" + seg[0]
	if len(seg) == 2 && (seg[0] == "drives" || seg[0] == "network-interfaces") {
		if seg[1] == "" {
			return nil, badRequest("Invalid request method and/or path: %s %s.", method, path)
		}
		key += "/{id}"
	} else if len(seg) > 1 {
		key = method + " /" + strings.Join(seg, "/")
	}
	if path == "/" {
		key = method + " /"
	}
	switch key {
	case "GET /":
		return s.info(), nil
	case "GET /version":
		return map[string]string{"firecracker_version": s.opts.Version}, nil
	case "GET /machine-config":
		return s.machineConfig(), nil
	case "PUT /machine-config", "PATCH /machine-config":
		return nil, s.putMachine(method == "PATCH", body)
	case "PUT /boot-source":
		return nil, s.putBoot(body)
	case "PUT /drives/{id}":
		return nil, s.putDrive(seg[1], body)
	case "PATCH /drives/{id}":
		return nil, s.patchDrive(seg[1], body)
	case "PUT /network-interfaces/{id}":
		return nil, s.putIface(seg[1], body)
	case "PATCH /network-interfaces/{id}":
		return nil, s.patchIface(seg[1], body)
	case "PUT /vsock":
		return nil, s.putVsock(body)
	case "PUT /balloon":
		return nil, s.putBalloon(body)
	case "PATCH /balloon":
		return nil, s.patchBalloon(body)
	case "GET /balloon":
		if s.vm.balloon == nil {
			return nil, badRequest("Balloon device not configured.")
		}
		b := cloneMap(s.vm.balloon)
		b["amount_mib"] = s.vm.balloonMiB
		return b, nil
	case "GET /balloon/statistics":
		return s.balloonStats()
	case "PATCH /balloon/statistics":
		return nil, s.patchBalloonStats(body)
	case "PUT /mmds/config":
		return nil, s.putMmdsConfig(body)
	case "PUT /mmds", "PATCH /mmds":
		return nil, s.putMmds(method == "PATCH", body)
	case "GET /mmds":
		if s.vm.mmds == nil {
			return nil, &fault{http.StatusNotFound, "The MMDS data store content can not be found."}
		}
		return s.vm.mmds, nil
	case "PUT /logger":
		if _, err := decode(body, logger); err != nil {
			return nil, badRequest("%v", err)
		}
		if s.vm.loggerSet {
			return nil, badRequest("The logger was already initialized.")
		}
		s.vm.loggerSet = true
		return nil, nil
	case "PUT /metrics":
		if _, err := decode(body, metrics); err != nil {
			return nil, badRequest("%v", err)
		}
		if s.vm.metricsSet {
			return nil, badRequest("Reinitialization of metrics not allowed.")
		}
		s.vm.metricsSet = true
		return nil, nil
	case "PUT /actions":
		return nil, s.action(body)
	case "PATCH /vm":
		return nil, s.patchVM(body)
	case "GET /vm/config":
		return s.fullConfig(), nil
	case "PUT /snapshot/create":
		return nil, s.snapshotCreate(body)
	case "PUT /snapshot/load":
		return nil, s.snapshotLoad(body)
	}
	return nil, badRequest("Invalid request method and/or path: %s %s.", method, path)
}

func (s *Server) info() map[string]any {
	state := "Not started"
	switch {
	case s.vm.started && s.vm.paused:
		state = "Paused"
	case s.vm.started:
		state = "Running"
	}
	return map[string]any{"app_name": "Firecracker", "id": s.opts.ID, "state": state, "vmm_version": s.opts.Version}
}

func (s *Server) machineConfig() map[string]any {
	if !s.vm.machineSet {
		return map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"}
	}
	return s.vm.machine
}

func (s *Server) memMiB() int64 {
	if !s.vm.machineSet {
		return 128
	}
	return uint64v(s.vm.machine, "mem_size_mib")
}

// preBoot marks a boot-specific resource configured; it fails after start.
func (s *Server) preBoot() *fault {
	if s.vm.started {
		return badRequest(msgAfterStart)
	}
	return nil
}

func (s *Server) postBoot() *fault {
	if !s.vm.started {
		return badRequest(msgBeforeStart)
	}
	return nil
}

func (s *Server) putMachine(patch bool, body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	sch := machineConfig
	if patch {
		sch = optional(machineConfig)
	}
	m, err := decode(body, sch)
	if err != nil {
		return badRequest("%v", err)
	}
	next := map[string]any{}
	if patch {
		next = cloneMap(s.machineConfig())
	}
	for k, v := range m {
		next[k] = v
	}
	vcpus := uint64v(next, "vcpu_count")
	if boolean(next, "smt") && vcpus > 1 && vcpus%2 != 0 {
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if str(next, "huge_pages") == "2M" && uint64v(next, "mem_size_mib")%2 != 0 {
		return badRequest("The memory size (MiB) must be a multiple of 2 with 2M huge pages.")
	}
	s.vm.machine, s.vm.machineSet, s.vm.configured = next, true, true
	return nil
}

// optional is s with no field required (PATCH bodies).
func optional(s *schema) *schema {
	o := &schema{name: s.name, fields: append([]field(nil), s.fields...)}
	for i := range o.fields {
		o.fields[i].required = false
	}
	return o
}

func fileExists(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	return nil
}

func (s *Server) putBoot(body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, bootSource)
	if err != nil {
		return badRequest("%v", err)
	}
	if err := fileExists(str(m, "kernel_image_path")); err != nil {
		return badRequest("The kernel file cannot be opened: %v", err)
	}
	if p := str(m, "initrd_path"); p != "" {
		if err := fileExists(p); err != nil {
			return badRequest("The initrd file cannot be opened: %v", err)
		}
	}
	s.vm.boot, s.vm.configured = m, true
	return nil
}

func (s *Server) putDrive(id string, body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, drive)
	if err != nil {
		return badRequest("%v", err)
	}
	if str(m, "drive_id") != id {
		return badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, str(m, "drive_id"))
	}
	if str(m, "socket") != "" {
		return badRequest("Unable to create the block device: vhost-user-block is not simulated")
	}
	p := str(m, "path_on_host")
	if p == "" {
		return badRequest("Unable to create the block device: missing field `path_on_host` for a virtio-block drive")
	}
	if err := fileExists(p); err != nil {
		return badRequest("Unable to create the block device: BackingFile(%v)", err)
	}
	if boolean(m, "is_root_device") {
		for did, d := range s.vm.drives {
			if did != id && boolean(d, "is_root_device") {
				return badRequest("A root block device already exists!")
			}
		}
	}
	s.vm.drives[id], s.vm.configured = m, true
	return nil
}

func (s *Server) patchDrive(id string, body []byte) *fault {
	if f := s.postBoot(); f != nil {
		return f
	}
	m, err := decode(body, &schema{"PartialDrive", []field{
		{name: "drive_id", kind: kString, required: true},
		{name: "path_on_host", kind: kString},
		{name: "rate_limiter", kind: kObject, obj: rateLimiter},
	}})
	if err != nil {
		return badRequest("%v", err)
	}
	if str(m, "drive_id") != id {
		return badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, str(m, "drive_id"))
	}
	if s.vm.drives[id] == nil {
		return badRequest("Invalid block device ID: %s", id)
	}
	return nil
}

func (s *Server) putIface(id string, body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, netIface)
	if err != nil {
		return badRequest("%v", err)
	}
	if str(m, "iface_id") != id {
		return badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, str(m, "iface_id"))
	}
	for oid, o := range s.vm.ifaces {
		if oid != id && str(o, "host_dev_name") == str(m, "host_dev_name") {
			return badRequest("The host device name %s is already in use.", str(m, "host_dev_name"))
		}
		if oid != id && str(m, "guest_mac") != "" && str(o, "guest_mac") == str(m, "guest_mac") {
			return badRequest("The guest MAC address %s is already in use.", str(m, "guest_mac"))
		}
	}
	s.vm.ifaces[id], s.vm.configured = m, true
	return nil
}

func (s *Server) patchIface(id string, body []byte) *fault {
	if f := s.postBoot(); f != nil {
		return f
	}
	m, err := decode(body, partialNetIface)
	if err != nil {
		return badRequest("%v", err)
	}
	if str(m, "iface_id") != id {
		return badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, str(m, "iface_id"))
	}
	if s.vm.ifaces[id] == nil {
		return badRequest("Invalid interface ID - not found.")
	}
	return nil
}

func (s *Server) putVsock(body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, vsock)
	if err != nil {
		return badRequest("%v", err)
	}
	// Firecracker binds the host side of the device at once.
	if s.vm.vsockLn != nil {
		_ = s.vm.vsockLn.Close()
		s.vm.vsockLn = nil
	}
	ln, err := net.Listen("unix", str(m, "uds_path"))
	if err != nil {
		return badRequest("Cannot create vsock device: %v", err)
	}
	s.vm.vsock, s.vm.vsockLn, s.vm.configured = m, ln, true
	return nil
}

func (s *Server) putBalloon(body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, balloon)
	if err != nil {
		return badRequest("%v", err)
	}
	if uint64v(m, "amount_mib") > s.memMiB() {
		return badRequest("Amount of pages requested is too large.")
	}
	s.vm.balloon, s.vm.balloonMiB, s.vm.configured = m, uint64v(m, "amount_mib"), true
	return nil
}

func (s *Server) patchBalloon(body []byte) *fault {
	m, err := decode(body, balloonUpdate)
	if err != nil {
		return badRequest("%v", err)
	}
	if s.vm.balloon == nil {
		return badRequest("Balloon device not configured.")
	}
	amount := uint64v(m, "amount_mib")
	if amount > s.memMiB() {
		return badRequest("Amount of pages requested is too large.")
	}
	if s.vm.started && s.mem != nil && amount > s.vm.balloonMiB {
		// The guest hands the pages over; Firecracker drops them.
		if err := s.mem.discard(s.memMiB()-amount, s.memMiB()-s.vm.balloonMiB); err != nil {
			return &fault{http.StatusInternalServerError, fmt.Sprintf("balloon: %v", err)}
		}
	}
	s.vm.balloonMiB = amount
	return nil
}

func (s *Server) balloonStats() (any, *fault) {
	if s.vm.balloon == nil {
		return nil, badRequest("Balloon device not configured.")
	}
	if uint64v(s.vm.balloon, "stats_polling_interval_s") == 0 {
		return nil, badRequest("Statistics for the balloon device are not enabled")
	}
	if f := s.postBoot(); f != nil {
		return nil, f
	}
	mem, b := s.memMiB(), s.vm.balloonMiB
	avail := max((mem-b-16)<<20, 0)
	return map[string]any{
		"target_pages": b * 256, "actual_pages": b * 256, "target_mib": b, "actual_mib": b,
		"total_memory": mem << 20, "free_memory": avail, "available_memory": avail,
	}, nil
}

func (s *Server) patchBalloonStats(body []byte) *fault {
	m, err := decode(body, balloonStatsUpdate)
	if err != nil {
		return badRequest("%v", err)
	}
	if s.vm.balloon == nil {
		return badRequest("Balloon device not configured.")
	}
	if (uint64v(s.vm.balloon, "stats_polling_interval_s") == 0) != (uint64v(m, "stats_polling_interval_s") == 0) && s.vm.started {
		return badRequest("Cannot enable/disable balloon statistics after boot.")
	}
	s.vm.balloon["stats_polling_interval_s"] = m["stats_polling_interval_s"]
	return nil
}

func (s *Server) putMmdsConfig(body []byte) *fault {
	if f := s.preBoot(); f != nil {
		return f
	}
	m, err := decode(body, mmdsConfig)
	if err != nil {
		return badRequest("%v", err)
	}
	ids, _ := m["network_interfaces"].([]any)
	if len(ids) == 0 {
		return badRequest("The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range ids {
		if s.vm.ifaces[id.(string)] == nil {
			return badRequest("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	s.vm.mmdsCfg, s.vm.configured = m, true
	return nil
}

func (s *Server) putMmds(patch bool, body []byte) *fault {
	if len(body) > MmdsLimit {
		return badRequest("The MMDS patch request doesn't fit.")
	}
	m, err := decode(body, mmdsContents)
	if err != nil {
		return badRequest("%v", err)
	}
	if patch {
		if s.vm.mmds == nil {
			return badRequest("The MMDS data store is not initialized.")
		}
		mergePatch(s.vm.mmds, m)
		return nil
	}
	s.vm.mmds = m
	return nil
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(dst, patch map[string]any) {
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			d, ok := dst[k].(map[string]any)
			if !ok {
				d = map[string]any{}
				dst[k] = d
			}
			mergePatch(d, pv)
		default:
			dst[k] = v
		}
	}
}

func (s *Server) action(body []byte) *fault {
	m, err := decode(body, action)
	if err != nil {
		return badRequest("%v", err)
	}
	switch str(m, "action_type") {
	case "InstanceStart":
		if s.vm.started {
			return badRequest(msgAfterStart)
		}
		if s.vm.boot == nil {
			return badRequest("Cannot start microvm without kernel configuration.")
		}
		mem, err := newGuestMemory(s.memMiB() << 20)
		if err != nil {
			return &fault{http.StatusInternalServerError, fmt.Sprintf("Cannot allocate guest memory: %v", err)}
		}
		s.mem = mem
		s.vm.track = boolean(s.machineConfig(), "track_dirty_pages")
		s.mem.write(s.opts.WriteOnStart)
		s.vm.started = true
	case "FlushMetrics":
		if !s.vm.metricsSet {
			return badRequest("The metrics system is not initialized.")
		}
	case "SendCtrlAltDel":
		if f := s.postBoot(); f != nil {
			return f
		}
		if s.opts.Exit != nil {
			go func() {
				time.Sleep(50 * time.Millisecond)
				s.opts.Exit(0)
			}()
		}
	}
	return nil
}

func (s *Server) patchVM(body []byte) *fault {
	m, err := decode(body, vmSchema)
	if err != nil {
		return badRequest("%v", err)
	}
	if f := s.postBoot(); f != nil {
		return f
	}
	switch str(m, "state") {
	case "Paused":
		s.vm.paused = true
	case "Resumed":
		if s.vm.paused && s.vm.loaded && !s.vm.resumed {
			s.vm.resumed = true
			s.mem.write(s.opts.WriteOnResume)
		}
		s.vm.paused = false
	}
	return nil
}

func (s *Server) fullConfig() map[string]any {
	out := map[string]any{"machine-config": s.machineConfig()}
	if s.vm.boot != nil {
		out["boot-source"] = s.vm.boot
	}
	var ds []any
	for _, id := range sortedKeys(s.vm.drives) {
		ds = append(ds, s.vm.drives[id])
	}
	out["drives"] = ds
	var ns []any
	for _, id := range sortedKeys(s.vm.ifaces) {
		ns = append(ns, s.vm.ifaces[id])
	}
	out["network-interfaces"] = ns
	if s.vm.balloon != nil {
		out["balloon"] = s.vm.balloon
	}
	if s.vm.vsock != nil {
		out["vsock"] = s.vm.vsock
	}
	if s.vm.mmdsCfg != nil {
		out["mmds-config"] = s.vm.mmdsCfg
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// RunContext serves until ctx ends (tests running the simulator in-process).
func (s *Server) RunContext(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	return s.Serve()
}
