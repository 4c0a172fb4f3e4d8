package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/uffd"
)

// Firecracker is the VMM backend that runs Firecracker (KVM only), through
// its jailer when Jailer is set. It boots the same vmlinux (the uncompressed
// ELF scripts/guest-kernel.sh keeps beside vmlinuz), initramfs and disks as
// the QEMU backend, in the capsule's network namespace on the same tap.
//
// Every VM runs in a directory of its own whose files have fixed names
// (vmlinux, initrd, vda..., mem, v.sock, api.sock): the jail's root, or
// <RunDir>/<key> without the jailer. Firecracker is given only these
// relative names, so a snapshot (which records drive paths and the vsock
// path) loads in any capsule directory, on any host.
//
// Snapshots: SaveState pauses the VM and asks for a Full snapshot written
// into MachineSpec.MemPath (a VM booted cold) or, for a VM restored from a
// snapshot, a Diff snapshot of the pages written since (dirty page
// tracking) which it lays over MemPath, the restored image; the caller then
// stores MemPath through the snapshot engine as for QEMU. Launch with
// MachineSpec.Incoming loads the saved state with mem_backend Uffd: the
// page server of internal/uffd serves MemPath to Firecracker (its UFFD
// handshake) and prefetches the rest in the background.
type Firecracker struct {
	// Bin is the firecracker binary; Version its version (NewFirecracker
	// reads it from `firecracker --version`).
	Bin     string
	Version string
	// Jailer, if set, runs each VM under Firecracker's jailer.
	Jailer *JailerConfig
	// Nsenter (without the jailer) puts Firecracker in the capsule's
	// network namespace.
	Nsenter string
	// RunDir holds the per-VM directories when there is no jailer
	// (default /run/wrenn-fc).
	RunDir string
	// TxRateLimit, if set, is every VM NIC's transmit rate limiter
	// (Firecracker's own; bandwidth is normally the host's traffic
	// control, as for every isolation). TxRateLimitSeed is the seed's
	// figure: 200 MB/s sustained with a 100 MB burst.
	TxRateLimit *TokenBucket
	// FullSnapshots turns diff snapshots off: a restored VM's pause
	// writes all of its memory again.
	FullSnapshots bool
	// DisablePrefetch leaves restored memory to on-demand faults only.
	DisablePrefetch bool
	Log             *slog.Logger
}

// TxRateLimitSeed is the seed's NIC transmit limit: 200 MB/s sustained
// (100 MB refilled every 500 ms), a one-time burst of 100 MB.
var TxRateLimitSeed = TokenBucket{Size: 100_000_000, RefillTimeMs: 500, OneTimeBurst: 100_000_000}

// Firecracker versions the backend drives: from 1.8 (ACPI descriptions of
// the virtio-mmio devices, which the guest's virtio_mmio module reads; the
// snapshot load body with mem_backend and track_dirty_pages) through 1.x.
var (
	FirecrackerMinVersion = [3]int{1, 8, 0}
	fcVersionRe           = regexp.MustCompile(`^Firecracker v([0-9]+)\.([0-9]+)\.([0-9]+)`)
)

// ParseFirecrackerVersion reads `firecracker --version` output (first line
// "Firecracker vX.Y.Z").
func ParseFirecrackerVersion(out string) ([3]int, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	m := fcVersionRe.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return [3]int{}, fmt.Errorf("unrecognised version output %q (want \"Firecracker vX.Y.Z\")", line)
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, nil
}

// NewFirecracker checks the binary (it must exist and report a supported
// version) and, if set, the jailer.
func NewFirecracker(ctx context.Context, bin string, jailer *JailerConfig, log *slog.Logger) (*Firecracker, error) {
	if log == nil {
		log = slog.Default()
	}
	if bin == "" {
		return nil, errors.New("firecracker: no binary given (--firecracker-bin)")
	}
	st, err := os.Stat(bin)
	if err != nil {
		return nil, fmt.Errorf("firecracker: binary %s: %w", bin, err)
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("firecracker: %s is not an executable file", bin)
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(vctx, bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("firecracker: %s --version: %w", bin, err)
	}
	v, err := ParseFirecrackerVersion(string(out))
	if err != nil {
		return nil, fmt.Errorf("firecracker: %s: %w", bin, err)
	}
	if v[0] != FirecrackerMinVersion[0] || v[1] < FirecrackerMinVersion[1] {
		return nil, fmt.Errorf("firecracker: %s is v%d.%d.%d; Wrenn drives v%d.%d.0 up to v%d.x",
			bin, v[0], v[1], v[2], FirecrackerMinVersion[0], FirecrackerMinVersion[1], FirecrackerMinVersion[0])
	}
	f := &Firecracker{Bin: bin, Version: fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]), Jailer: jailer, RunDir: "/run/wrenn-fc", Log: log}
	if jailer != nil {
		if err := jailer.check(bin); err != nil {
			return nil, err
		}
	} else if f.Nsenter, err = exec.LookPath("nsenter"); err != nil {
		return nil, fmt.Errorf("firecracker: nsenter not found (apt-get install util-linux): %w", err)
	}
	return f, nil
}

// Name implements VMM.
func (f *Firecracker) Name() string { return "firecracker" }

// vmID is the VM's id (jailer --id, firecracker --id): the capsule key.
func vmID(spec MachineSpec) string { return filepath.Base(spec.Dir) }

// workDir is the directory Firecracker sees as its files' home.
func (f *Firecracker) workDir(spec MachineSpec) string {
	if f.Jailer != nil {
		return f.Jailer.root(f.Bin, vmID(spec))
	}
	return filepath.Join(f.RunDir, vmID(spec))
}

// fcKernel is the vmlinux beside a vmlinuz (Firecracker boots the ELF).
func fcKernel(k string) string {
	if filepath.Base(k) == "vmlinuz" {
		if x := filepath.Join(filepath.Dir(k), "vmlinux"); fileExists(x) {
			return x
		}
	}
	return k
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// The fixed names inside a VM's directory.
const (
	fcAPISock   = "api.sock"
	fcKernelN   = "vmlinux"
	fcInitrdN   = "initrd"
	fcMemN      = "mem"
	fcMemDiffN  = "mem.diff"
	fcMemNextN  = "mem.next"
	fcStateN    = "vmstate"
	fcVsockN    = "v.sock"
	fcUffdSockN = "uffd.sock"
	fcPendingN  = "uffd-pending"
	fcIface     = "eth0"
	fcGuestCID  = 3
)

func driveName(i int) string { return fmt.Sprintf("vd%c", 'a'+i) }

// Launch implements VMM: the VM's directory, the process (jailer or
// firecracker), then the named boot steps, or the snapshot load.
func (f *Firecracker) Launch(ctx context.Context, spec MachineSpec) (_ Machine, err error) {
	id := vmID(spec)
	if !jailIDRe.MatchString(id) {
		return nil, fmt.Errorf("firecracker: VM id %q is not alphanumeric and hyphens (at most 64)", id)
	}
	m := &fcMachine{f: f, spec: spec, id: id, dir: f.workDir(spec), exited: make(chan struct{}), log: f.Log}
	if len(filepath.Join(m.dir, fcUffdSockN)) >= 108 {
		return nil, fmt.Errorf("firecracker: socket path %s is too long for a unix socket", filepath.Join(m.dir, fcUffdSockN))
	}
	f.cleanup(m.dir, id)
	defer func() {
		if err != nil {
			_ = m.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := f.prepare(m); err != nil {
		return nil, err
	}
	if err := f.start(ctx, m); err != nil {
		return nil, err
	}
	if spec.Incoming != nil {
		err = m.run(ctx, m.restoreSteps())
	} else {
		err = m.run(ctx, m.bootSteps())
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// start runs the process and waits until its API answers.
func (f *Firecracker) start(ctx context.Context, m *fcMachine) error {
	logf, err := os.OpenFile(filepath.Join(m.spec.Dir, "vmm.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fcArgs := []string{"--api-sock", fcAPISock, "--level", "Warning"}
	var cmd *exec.Cmd
	if f.Jailer != nil {
		cmd = exec.Command(f.Jailer.Path, f.Jailer.args(f.Bin, m.id, m.uid, m.spec, fcArgs)...)
	} else {
		argv := append([]string{f.Bin}, fcArgs...)
		argv = append(argv, "--id", m.id)
		if m.spec.Netns != "" {
			argv = append([]string{f.Nsenter, "--net=" + m.spec.Netns, "--"}, argv...)
		}
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.Dir = m.dir
	}
	f.Log.Debug("firecracker launch", "args", strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("firecracker: start %s: %w", cmd.Path, err)
	}
	m.pid = cmd.Process.Pid
	go func() {
		_ = cmd.Wait()
		close(m.exited)
	}()
	m.api = newFCClient(filepath.Join(m.dir, fcAPISock))
	return m.waitAPI(ctx)
}

// waitAPI polls the API socket until Firecracker answers GET /.
func (m *fcMachine) waitAPI(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := m.api.info(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-m.exited:
			what := "firecracker"
			if m.f.Jailer != nil {
				what = "the jailer (or firecracker under it)"
			}
			return fmt.Errorf("firecracker: %s exited before its API answered: %s", what, logTail(filepath.Join(m.spec.Dir, "vmm.log")))
		case <-ctx.Done():
			return fmt.Errorf("firecracker: API did not answer: %w (last: %w)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail is the end of the VMM's log (its stdout and stderr: the serial
// console and Firecracker's own messages).
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	const tail = 64 << 10
	off := max64(st.Size()-tail, 0)
	b, _ := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	return strings.TrimSpace(string(b))
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// Attach implements VMM: a VM left by an earlier agent. A restored VM
// whose memory was still being paged in when that agent died cannot go
// on (its page server died with it): Attach refuses it.
func (f *Firecracker) Attach(ctx context.Context, spec MachineSpec, pid int) (Machine, error) {
	id := vmID(spec)
	m := &fcMachine{f: f, spec: spec, id: id, dir: f.workDir(spec), exited: make(chan struct{}), log: f.Log, pid: pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || fcArgID(strings.Split(string(b), "\x00")) != id {
		return nil, fmt.Errorf("firecracker: process %d is not the VM %s", pid, id)
	}
	go m.watch()
	if fileExists(filepath.Join(m.dir, fcPendingN)) {
		_ = m.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("firecracker: VM %s was restored lazily and its page server ended before all memory was loaded", id)
	}
	m.api = newFCClient(filepath.Join(m.dir, fcAPISock))
	if m.f.Jailer != nil {
		if st, err := os.Stat(m.dir); err == nil {
			if s, ok := st.Sys().(*syscall.Stat_t); ok {
				m.uid, m.gid = int(s.Uid), int(s.Gid)
			}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := m.api.info(cctx); err != nil {
		_ = m.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return m, nil
}

type fcMachine struct {
	f        *Firecracker
	spec     MachineSpec
	id       string
	dir      string
	uid, gid int
	pid      int
	exited   chan struct{}
	log      *slog.Logger
	api      *fcClient

	mu         sync.Mutex
	restored   bool
	consoleOff int64
	srv        *uffd.Server
	src        *uffd.FileSource
	stopped    bool
}

// watch closes exited when a process that is not our child goes away.
func (m *fcMachine) watch() {
	for {
		if err := syscall.Kill(m.pid, 0); errors.Is(err, syscall.ESRCH) {
			close(m.exited)
			return
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.pid)); err == nil {
			if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
				close(m.exited)
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type fcStep struct {
	name string
	do   func(context.Context) error
}

// run runs named steps; the first failure names its step.
func (m *fcMachine) run(ctx context.Context, steps []fcStep) error {
	for _, s := range steps {
		t0 := time.Now()
		if err := s.do(ctx); err != nil {
			return fmt.Errorf("firecracker: %s: %w", s.name, err)
		}
		m.log.Debug("firecracker step", "vm", m.id, "step", s.name, "took", time.Since(t0))
	}
	return nil
}

func (m *fcMachine) bootSteps() []fcStep {
	spec := m.spec
	return []fcStep{
		{"machine-config", func(ctx context.Context) error {
			return m.api.put(ctx, "/machine-config", fcMachineConfig{
				VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMB, TrackDirtyPages: !m.f.FullSnapshots,
			})
		}},
		{"boot-source", func(ctx context.Context) error {
			return m.api.put(ctx, "/boot-source", fcBootSource{KernelImagePath: fcKernelN, InitrdPath: fcInitrdN, BootArgs: spec.Cmdline})
		}},
		{"drives", func(ctx context.Context) error {
			for i, d := range spec.Disks {
				if err := m.api.put(ctx, "/drives/"+driveName(i), fcDrive{
					DriveID: driveName(i), PathOnHost: driveName(i), IsReadOnly: d.ReadOnly, CacheType: "Unsafe", IOEngine: "Sync",
				}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"network-interfaces", func(ctx context.Context) error {
			if spec.Tap == "" {
				return nil
			}
			n := fcNetIface{IfaceID: fcIface, HostDevName: spec.Tap, GuestMAC: spec.MAC}
			if m.f.TxRateLimit != nil {
				n.TxRateLimiter = &fcRateLimiter{Bandwidth: m.f.TxRateLimit}
			}
			return m.api.put(ctx, "/network-interfaces/"+fcIface, n)
		}},
		{"vsock", func(ctx context.Context) error {
			return m.api.put(ctx, "/vsock", fcVsock{GuestCID: fcGuestCID, UDSPath: fcVsockN})
		}},
		{"balloon", func(ctx context.Context) error {
			return m.api.put(ctx, "/balloon", fcBalloon{AmountMiB: 0, DeflateOnOOM: true, StatsPollingIntervalS: spec.BalloonStatsSeconds})
		}},
		{"mmds", func(ctx context.Context) error {
			if spec.Tap == "" {
				return nil
			}
			if err := m.api.put(ctx, "/mmds/config", fcMmdsConfig{NetworkInterfaces: []string{fcIface}, Version: "V2"}); err != nil {
				return err
			}
			return m.putMMDS(ctx)
		}},
		{"instance-start", func(ctx context.Context) error { return m.api.action(ctx, "InstanceStart") }},
	}
}

func (m *fcMachine) putMMDS(ctx context.Context) error {
	md := map[string]string{}
	for k, v := range m.spec.Metadata {
		md[k] = v
	}
	return m.api.put(ctx, "/mmds", map[string]any{"wrenn": md})
}

// restoreSteps load the saved state with guest memory served by the page
// server (Firecracker's UFFD handshake happens inside snapshot-load).
func (m *fcMachine) restoreSteps() []fcStep {
	return []fcStep{
		{"state-file", func(context.Context) error {
			p := filepath.Join(m.dir, fcStateN)
			out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			if _, err := m.spec.Incoming.Seek(0, io.SeekStart); err != nil {
				_ = out.Close()
				return err
			}
			_, err = io.Copy(out, m.spec.Incoming)
			if err = errors.Join(err, out.Close()); err != nil {
				return err
			}
			return m.own(p)
		}},
		{"page-server", func(context.Context) error {
			src, err := uffd.OpenFile(m.spec.MemPath, 0)
			if err != nil {
				return err
			}
			sock := filepath.Join(m.dir, fcUffdSockN)
			srv, err := uffd.Listen(sock, uffd.Config{Source: src, Logger: m.log, DisablePrefetch: m.f.DisablePrefetch})
			if err != nil {
				_ = src.Close()
				return err
			}
			m.mu.Lock()
			m.src, m.srv, m.restored = src, srv, true
			m.mu.Unlock()
			if err := m.own(sock); err != nil {
				return err
			}
			pending := filepath.Join(m.dir, fcPendingN)
			if err := os.WriteFile(pending, nil, 0o600); err != nil {
				return err
			}
			go func() {
				err := srv.Serve(context.Background())
				if err != nil && !errors.Is(err, uffd.ErrClosed) {
					m.log.Warn("firecracker: page server ended", "vm", m.id, "err", err)
				}
			}()
			go func() {
				select {
				case <-srv.PrefetchDone():
					_ = os.Remove(pending)
				case <-m.exited:
				}
			}()
			return nil
		}},
		{"snapshot-load", func(ctx context.Context) error {
			return m.api.put(ctx, "/snapshot/load", fcSnapshotLoad{
				SnapshotPath:    fcStateN,
				MemBackend:      fcMemBackend{BackendType: "Uffd", BackendPath: fcUffdSockN},
				TrackDirtyPages: !m.f.FullSnapshots,
				ResumeVM:        false,
			})
		}},
		{"uffd-handshake", func(ctx context.Context) error {
			select {
			case <-m.srv.Ready():
				return nil
			case <-m.exited:
				return errors.New("firecracker exited before the page server's handshake")
			case <-ctx.Done():
				return ctx.Err()
			}
		}},
		{"mmds", func(ctx context.Context) error {
			if m.spec.Tap == "" {
				return nil
			}
			return m.putMMDS(ctx)
		}},
	}
}

// own gives a file in the VM's directory to the jailed uid.
func (m *fcMachine) own(p string) error {
	if m.f.Jailer == nil {
		return nil
	}
	return os.Chown(p, m.uid, m.gid)
}

// PID implements Machine.
func (m *fcMachine) PID() int { return m.pid }

// Pause implements Machine.
func (m *fcMachine) Pause(ctx context.Context) error { return m.api.setState(ctx, "Paused") }

// Resume implements Machine.
func (m *fcMachine) Resume(ctx context.Context) error { return m.api.setState(ctx, "Resumed") }

// GuestStopped implements Machine: Firecracker exits when the guest
// powers off, reboots or panics (panic=-1 reboot=t).
func (m *fcMachine) GuestStopped(context.Context) bool {
	select {
	case <-m.exited:
		return true
	default:
		return false
	}
}

// Running implements Machine.
func (m *fcMachine) Running(ctx context.Context) (bool, error) {
	i, err := m.api.info(ctx)
	if err != nil {
		return false, err
	}
	return i.State == "Running", nil
}

// SetBalloon implements Machine: Firecracker's balloon is sized in MiB
// taken from the guest, so target (memory left to the guest) becomes
// amount_mib = memory - target.
func (m *fcMachine) SetBalloon(ctx context.Context, target int64) error {
	amount := int64(m.spec.MemoryMB) - (target+(1<<20)-1)>>20
	amount = max64(amount, 0)
	return m.api.patch(ctx, "/balloon", map[string]int64{"amount_mib": amount})
}

// Balloon implements Machine.
func (m *fcMachine) Balloon(ctx context.Context) (BalloonInfo, error) {
	var s fcBalloonStats
	if err := m.api.do(ctx, "GET", "/balloon/statistics", nil, &s); err != nil {
		return BalloonInfo{}, err
	}
	bi := BalloonInfo{ActualBytes: (int64(m.spec.MemoryMB) - s.ActualMiB) << 20, FreeBytes: -1, TotalBytes: -1, AvailableBytes: -1}
	if s.FreeMemory != nil {
		bi.FreeBytes = *s.FreeMemory
	}
	if s.TotalMemory != nil {
		bi.TotalBytes = *s.TotalMemory
	}
	if s.AvailableMemory != nil {
		bi.AvailableBytes = *s.AvailableMemory
	}
	return bi, nil
}

// SaveState implements Machine: pause, snapshot (Full into MemPath for a
// VM booted cold; for a restored VM a Diff laid over MemPath, or with
// FullSnapshots a Full written beside it and renamed over it), the state
// file copied to out.
func (m *fcMachine) SaveState(ctx context.Context, out *os.File) error {
	if err := m.api.setState(ctx, "Paused"); err != nil {
		return err
	}
	m.mu.Lock()
	restored := m.restored
	m.mu.Unlock()
	req := fcSnapshotCreate{SnapshotPath: fcStateN, MemFilePath: fcMemN, SnapshotType: "Full"}
	var side string
	if restored {
		// MemPath is the page server's image: Firecracker writes beside it
		// (a file placed in the VM's directory at launch).
		req.MemFilePath, side = m.sidePath()
		if !m.f.FullSnapshots {
			req.SnapshotType = "Diff"
		}
		if err := os.Truncate(side, 0); err != nil {
			return err
		}
		defer func() { _ = os.Truncate(side, 0) }()
	}
	if err := m.api.put(ctx, "/snapshot/create", req); err != nil {
		return err
	}
	if restored {
		merge := applyDiff
		if m.f.FullSnapshots {
			merge = applyFull
		}
		if err := merge(side, m.spec.MemPath); err != nil {
			return fmt.Errorf("firecracker: lay the %s snapshot over %s: %w", req.SnapshotType, m.spec.MemPath, err)
		}
	}
	in, err := os.Open(filepath.Join(m.dir, fcStateN))
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return nil
}

// sidePath is the file a restored VM's snapshot memory goes to: its name
// in the VM's directory and its path beside MemPath (same tmpfs: holes are
// reported exactly).
func (m *fcMachine) sidePath() (name, path string) {
	if m.f.FullSnapshots {
		return fcMemNextN, m.spec.MemPath + ".next"
	}
	return fcMemDiffN, m.spec.MemPath + ".diff"
}

// applyFull makes base hold full's bytes: data written, zero pages
// punched out (base stays sparse). base is written in place, never
// truncated: the page server may still map it.
func applyFull(full, base string) error {
	d, err := os.Open(full)
	if err != nil {
		return err
	}
	defer d.Close()
	b, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	st, err := d.Stat()
	if err != nil {
		_ = b.Close()
		return err
	}
	buf := make([]byte, 4096)
	zero := make([]byte, 4096)
	for off := int64(0); off < st.Size(); off += int64(len(buf)) {
		n, err := d.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			_ = b.Close()
			return err
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			err = unix.Fallocate(int(b.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
		} else {
			_, err = b.WriteAt(buf[:n], off)
		}
		if err != nil {
			_ = b.Close()
			return err
		}
	}
	return b.Close()
}

// applyDiff copies the data extents of diff (a sparse file holding only
// the dirty pages at their offsets) into base.
func applyDiff(diff, base string) error {
	d, err := os.Open(diff)
	if err != nil {
		return err
	}
	defer d.Close()
	b, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	st, err := d.Stat()
	if err != nil {
		_ = b.Close()
		return err
	}
	buf := make([]byte, 1<<20)
	var off int64
	for off < st.Size() {
		data, err := d.Seek(off, seekData)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := d.Seek(data, seekHole)
		if err != nil {
			hole = st.Size()
		}
		for p := data; p < hole; {
			n := min(int64(len(buf)), hole-p)
			if _, err := d.ReadAt(buf[:n], p); err != nil {
				_ = b.Close()
				return err
			}
			if _, err := b.WriteAt(buf[:n], p); err != nil {
				_ = b.Close()
				return err
			}
			p += n
		}
		off = hole
	}
	return b.Close()
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// Console implements Machine: what the VMM's log (where the serial
// console goes) gained since the last call, at most its last 64 KiB, as
// QEMU's console ring buffer drains when read.
func (m *fcMachine) Console(context.Context) string {
	f, err := os.Open(filepath.Join(m.spec.Dir, "vmm.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	off := max64(m.consoleOff, st.Size()-64<<10)
	if off > st.Size() {
		off = 0 // the log was truncated (a new launch)
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	m.consoleOff = off + int64(len(b))
	return string(b)
}

// Stop implements Machine: SIGTERM, then SIGKILL after 3 s; then the page
// server, the VM's directory (mounts, links, jail) and its cgroup go.
func (m *fcMachine) Stop(ctx context.Context) error {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return nil
	}
	m.stopped = true
	m.mu.Unlock()
	var err error
	if m.pid > 0 {
		_ = syscall.Kill(m.pid, syscall.SIGTERM)
		select {
		case <-m.exited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(m.pid, syscall.SIGKILL)
			select {
			case <-m.exited:
			case <-time.After(10 * time.Second):
				err = fmt.Errorf("firecracker: process %d did not exit", m.pid)
			}
		case <-ctx.Done():
			_ = syscall.Kill(m.pid, syscall.SIGKILL)
			<-m.exited
		}
	}
	if m.api != nil {
		m.api.close()
	}
	m.mu.Lock()
	if m.srv != nil {
		_ = m.srv.Close()
		m.srv = nil
	}
	if m.src != nil {
		_ = m.src.Close()
		m.src = nil
	}
	restored := m.restored
	m.mu.Unlock()
	err = errors.Join(err, m.f.cleanup(m.dir, m.id))
	if restored || m.spec.Incoming != nil {
		_, side := m.sidePath()
		if rerr := os.Remove(side); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Exited implements Machine.
func (m *fcMachine) Exited() <-chan struct{} { return m.exited }

// Close implements Machine.
func (m *fcMachine) Close() error {
	if m.api != nil {
		m.api.close()
	}
	return nil
}
