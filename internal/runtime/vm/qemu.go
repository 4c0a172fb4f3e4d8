package vm

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QEMU is the VMM backend that runs qemu-system-x86_64's microvm machine
// (virtio-mmio devices, no PCI, no firmware beyond qboot), with KVM when
// MachineSpec.KVM is set and TCG emulation otherwise, controlled over QMP.
//
// Each VM runs in its capsule's network namespace (through nsenter, so
// QEMU opens the tap there), in its own session (an agent restart leaves
// it running), under QEMU's seccomp sandbox, with guest RAM in a
// memory-backend-file shared with the host (share=on: what SaveState
// leaves out of the migration stream with the x-ignore-shared capability).
type QEMU struct {
	// Path is qemu-system-x86_64 (resolved from PATH by NewQEMU).
	Path string
	// Nsenter is util-linux's nsenter.
	Nsenter string
	// SocketDir holds the QMP sockets (unix socket paths are short).
	SocketDir string
	Log       *slog.Logger
}

// NewQEMU finds qemu-system-x86_64 and nsenter.
func NewQEMU(socketDir string, log *slog.Logger) (*QEMU, error) {
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("vm: qemu-system-x86_64 not found (apt-get install qemu-system-x86): %w", err)
	}
	ns, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, fmt.Errorf("vm: nsenter not found (apt-get install util-linux): %w", err)
	}
	if err := os.MkdirAll(socketDir, 0o700); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	return &QEMU{Path: q, Nsenter: ns, SocketDir: socketDir, Log: log}, nil
}

// Name implements VMM.
func (q *QEMU) Name() string { return "qemu" }

func (q *QEMU) socket(spec MachineSpec) string {
	return filepath.Join(q.SocketDir, filepath.Base(spec.Dir)+".qmp")
}

// args is QEMU's command line for spec.
func (q *QEMU) args(spec MachineSpec) []string {
	// TCG's translation cache defaults to up to 1 GiB per VM; 64 MiB keeps
	// an idle VM's overhead down at little cost for a guest's hot code.
	accel, cpu := "tcg,tb-size=64", "qemu64"
	if spec.KVM {
		accel, cpu = "kvm", "host"
	}
	a := []string{
		"-name", "wrenn-" + filepath.Base(spec.Dir),
		"-machine", "microvm,acpi=on,rtc=on,x-option-roms=off,isa-serial=on,memory-backend=mem",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(spec.VCPUs),
		"-m", strconv.Itoa(spec.MemoryMB) + "M",
		"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", spec.MemoryMB, spec.MemPath),
		// A guest that powers off or panics stops (its console stays
		// readable over QMP) instead of taking QEMU with it; the driver
		// notices (Machine.GuestStopped) and ends QEMU.
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-no-shutdown",
		"-chardev", "ringbuf,id=con,size=65536",
		"-serial", "chardev:con",
		"-kernel", spec.Kernel,
		"-initrd", spec.Initrd,
		"-append", spec.Cmdline,
		"-qmp", "unix:" + q.socket(spec) + ",server=on,wait=off",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	}
	for i, d := range spec.Disks {
		ro := ""
		if d.ReadOnly {
			ro = ",readonly=on"
		}
		id := fmt.Sprintf("vd%c", 'a'+i)
		a = append(a,
			"-drive", fmt.Sprintf("id=%s,file=%s,format=raw,if=none,cache=none,aio=threads,discard=unmap%s", id, d.Path, ro),
			"-device", "virtio-blk-device,drive="+id)
	}
	if spec.Tap != "" {
		a = append(a,
			"-netdev", "tap,id=net0,ifname="+spec.Tap+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+spec.MAC)
	}
	a = append(a, "-device", fmt.Sprintf("virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on,guest-stats-polling-interval=%d", spec.BalloonStatsSeconds))
	if spec.Incoming != nil {
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

// Launch implements VMM.
func (q *QEMU) Launch(ctx context.Context, spec MachineSpec) (_ Machine, err error) {
	sock := q.socket(spec)
	_ = os.Remove(sock)
	logf, err := os.OpenFile(filepath.Join(spec.Dir, "vmm.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	argv := append([]string{"--net=" + spec.Netns, "--", q.Path}, q.args(spec)...)
	if spec.Netns == "" {
		argv = argv[2:]
	}
	cmd := exec.Command(q.Nsenter, argv...)
	if spec.Netns == "" {
		cmd = exec.Command(q.Path, q.args(spec)...)
	}
	q.Log.Debug("launch", "args", strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.Incoming != nil {
		cmd.ExtraFiles = []*os.File{spec.Incoming} // fd 3
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: start qemu: %w", err)
	}
	m := &qemuMachine{pid: cmd.Process.Pid, sock: sock, dir: spec.Dir, exited: make(chan struct{}), log: q.Log}
	go func() {
		_ = cmd.Wait()
		close(m.exited)
	}()
	defer func() {
		if err != nil {
			_ = m.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := m.connect(ctx); err != nil {
		return nil, err
	}
	if spec.Incoming != nil {
		if err := m.incoming(ctx); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Attach implements VMM.
func (q *QEMU) Attach(ctx context.Context, spec MachineSpec, pid int) (Machine, error) {
	sock := q.socket(spec)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(b, []byte("unix:"+sock+",")) {
		return nil, fmt.Errorf("vm: process %d is not the VM of %s", pid, spec.Dir)
	}
	m := &qemuMachine{pid: pid, sock: sock, dir: spec.Dir, exited: make(chan struct{}), log: q.Log}
	go m.watch()
	if err := m.connect(ctx); err != nil {
		_ = m.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return m, nil
}

type qemuMachine struct {
	pid    int
	sock   string
	dir    string
	exited chan struct{}
	log    *slog.Logger

	mu  sync.Mutex
	qmp *qmpClient
}

// watch closes exited when a process that is not our child goes away.
func (m *qemuMachine) watch() {
	for {
		if err := syscall.Kill(m.pid, 0); errors.Is(err, syscall.ESRCH) {
			close(m.exited)
			return
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.pid)); err == nil {
			// A zombie (of a dead parent's reaper) counts as gone.
			if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
				close(m.exited)
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// connect waits for the QMP socket and negotiates.
func (m *qemuMachine) connect(ctx context.Context) error {
	for {
		c, err := dialQMP(ctx, m.sock)
		if err == nil {
			m.mu.Lock()
			m.qmp = c
			m.mu.Unlock()
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("vm: qemu exited: %s", m.logTail())
		case <-ctx.Done():
			return fmt.Errorf("vm: qmp: %w", errors.Join(ctx.Err(), err))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail returns the end of QEMU's own log (its errors).
func (m *qemuMachine) logTail() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "vmm.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "no output"
	}
	return s
}

// client returns the QMP connection, dialling again if an earlier
// command's end (a cancelled context, a broken pipe) closed it.
func (m *qemuMachine) client(ctx context.Context) (*qmpClient, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.qmp != nil {
		return m.qmp, nil
	}
	select {
	case <-m.exited:
		return nil, fmt.Errorf("vm: qemu has exited: %s", m.logTail())
	default:
	}
	c, err := dialQMP(ctx, m.sock)
	if err != nil {
		return nil, fmt.Errorf("vm: qmp: %w", err)
	}
	m.qmp = c
	return c, nil
}

func (m *qemuMachine) exec(ctx context.Context, cmd string, args, out any) error {
	return m.execFile(ctx, cmd, args, out, nil)
}

func (m *qemuMachine) execFile(ctx context.Context, cmd string, args, out any, f *os.File) error {
	c, err := m.client(ctx)
	if err != nil {
		return err
	}
	if f != nil {
		err = c.ExecuteWithFile(ctx, cmd, args, f)
	} else {
		err = c.Execute(ctx, cmd, args, out)
	}
	var qe *QMPError
	if err != nil && !errors.As(err, &qe) {
		// The connection is unusable (closed on a cancelled context).
		m.mu.Lock()
		if m.qmp == c {
			_ = c.Close()
			m.qmp = nil
		}
		m.mu.Unlock()
	}
	return err
}

func (m *qemuMachine) PID() int { return m.pid }

func (m *qemuMachine) Exited() <-chan struct{} { return m.exited }

func (m *qemuMachine) Pause(ctx context.Context) error  { return m.exec(ctx, "stop", nil, nil) }
func (m *qemuMachine) Resume(ctx context.Context) error { return m.exec(ctx, "cont", nil, nil) }

func (m *qemuMachine) status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	err := m.exec(ctx, "query-status", nil, &st)
	return st.Status, err
}

func (m *qemuMachine) GuestStopped(ctx context.Context) bool {
	select {
	case <-m.exited:
		return true
	default:
	}
	st, err := m.status(ctx)
	return err == nil && (st == "shutdown" || st == "guest-panicked" || st == "internal-error")
}

func (m *qemuMachine) Running(ctx context.Context) (bool, error) {
	st, err := m.status(ctx)
	return st == "running", err
}

func (m *qemuMachine) SetBalloon(ctx context.Context, target int64) error {
	return m.exec(ctx, "balloon", map[string]any{"value": target}, nil)
}

func (m *qemuMachine) Balloon(ctx context.Context) (BalloonInfo, error) {
	var b struct {
		Actual int64 `json:"actual"`
	}
	if err := m.exec(ctx, "query-balloon", nil, &b); err != nil {
		return BalloonInfo{}, err
	}
	var st struct {
		Stats      map[string]int64 `json:"stats"`
		LastUpdate int64            `json:"last-update"`
	}
	info := BalloonInfo{ActualBytes: b.Actual, FreeBytes: -1, TotalBytes: -1, AvailableBytes: -1}
	if err := m.exec(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/balloon0", "property": "guest-stats"}, &st); err != nil {
		return info, nil //nolint:nilerr // statistics are optional
	}
	info.LastUpdate = st.LastUpdate
	get := func(k string) int64 {
		if v, ok := st.Stats[k]; ok {
			return v
		}
		return -1
	}
	info.FreeBytes, info.TotalBytes, info.AvailableBytes = get("stat-free-memory"), get("stat-total-memory"), get("stat-available-memory")
	return info, nil
}

// RefreshBalloonStats implements BalloonStatsRefresher. The guest reports
// when QEMU hands it the statistics buffer, on a timer of the polling
// interval; setting the interval (in whole seconds) re-arms that timer, so
// an interval of 1 s brings a report within about a second. The driver's
// interval is restored afterwards. A report is fresh when its time
// (last-update, seconds) is later than the second the request was made in.
func (m *qemuMachine) RefreshBalloonStats(ctx context.Context, interval int) (BalloonInfo, error) {
	const prop = "guest-stats-polling-interval"
	path := "/machine/peripheral/balloon0"
	asked := time.Now().Unix()
	if err := m.exec(ctx, "qom-set", map[string]any{"path": path, "property": prop, "value": 1}, nil); err != nil {
		return BalloonInfo{}, err
	}
	defer func() {
		if interval > 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = m.exec(rctx, "qom-set", map[string]any{"path": path, "property": prop, "value": interval}, nil)
			cancel()
		}
	}()
	for {
		info, err := m.Balloon(ctx)
		if err != nil {
			return info, err
		}
		if info.LastUpdate > asked && info.AvailableBytes > 0 {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("vm: no fresh balloon statistics: %w", ctx.Err())
		case <-m.exited:
			return info, errors.New("vm: the VMM exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *qemuMachine) setIgnoreShared(ctx context.Context) error {
	return m.exec(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

// SaveState implements Machine: stop, then migrate the device state (RAM
// shared and so skipped) to f through a descriptor passed over QMP.
func (m *qemuMachine) SaveState(ctx context.Context, f *os.File) error {
	if err := m.exec(ctx, "stop", nil, nil); err != nil {
		return err
	}
	if err := m.setIgnoreShared(ctx); err != nil {
		return err
	}
	if err := m.execFile(ctx, "getfd", map[string]any{"fdname": "state"}, nil, f); err != nil {
		return err
	}
	if err := m.exec(ctx, "migrate", map[string]any{"uri": "fd:state"}, nil); err != nil {
		return err
	}
	return m.waitMigration(ctx)
}

func (m *qemuMachine) waitMigration(ctx context.Context) error {
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := m.exec(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("vm: save state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// incoming loads the device state from fd 3 and waits until QEMU has
// (paused, -S) or has exited on a bad stream.
func (m *qemuMachine) incoming(ctx context.Context) error {
	if err := m.setIgnoreShared(ctx); err != nil {
		return err
	}
	if err := m.exec(ctx, "migrate-incoming", map[string]any{"uri": "fd:3"}, nil); err != nil {
		return err
	}
	for {
		st, err := m.status(ctx)
		if err != nil {
			// QEMU exits on a stream it cannot load: say so with its
			// own message rather than the broken control connection's.
			select {
			case <-m.exited:
				return fmt.Errorf("vm: loading the saved device state failed, qemu exited: %s", m.logTail())
			case <-time.After(2 * time.Second):
			}
			return err
		}
		if st != "inmigrate" {
			if st != "paused" && st != "prelaunch" && st != "postmigrate" {
				return fmt.Errorf("vm: load state: vm is %s", st)
			}
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("vm: load state: qemu exited: %s", m.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (m *qemuMachine) Console(ctx context.Context) string {
	var s string
	if err := m.exec(ctx, "ringbuf-read", map[string]any{"device": "con", "size": 65536, "format": "base64"}, &s); err != nil {
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return ""
	}
	return string(b)
}

// Stop implements Machine: quit over QMP, then SIGKILL if QEMU has not
// gone within two seconds. It returns once the process is gone.
func (m *qemuMachine) Stop(ctx context.Context) error {
	select {
	case <-m.exited:
	default:
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = m.exec(qctx, "quit", nil, nil)
		cancel()
		select {
		case <-m.exited:
		case <-time.After(2 * time.Second):
			_ = syscall.Kill(m.pid, syscall.SIGKILL)
			select {
			case <-m.exited:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("vm: qemu %d does not exit after SIGKILL", m.pid)
			}
		}
	}
	_ = m.Close()
	_ = os.Remove(m.sock)
	return nil
}

func (m *qemuMachine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.qmp == nil {
		return nil
	}
	err := m.qmp.Close()
	m.qmp = nil
	return err
}
