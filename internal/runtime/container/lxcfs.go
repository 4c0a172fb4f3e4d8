package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// lxcfsFiles are the files LXCFS computes from the reading process's
// cgroups and PID namespace (memory limit, CPU quota, its own uptime,
// load, CPU and disk counters, swap) and that every capsule gets
// bind-mounted over the host's. runc allows exactly these /proc files as
// mount destinations.
var lxcfsFiles = []string{
	"/proc/cpuinfo", "/proc/diskstats", "/proc/loadavg", "/proc/meminfo",
	"/proc/stat", "/proc/swaps", "/proc/uptime", "/sys/devices/system/cpu/online",
}

// lxcfsMounts are the bundle mounts of the lxcfs mounted at dir ("" = none).
func lxcfsMounts(dir string) []specs.Mount {
	if dir == "" {
		return nil
	}
	out := make([]specs.Mount, 0, len(lxcfsFiles))
	for _, f := range lxcfsFiles {
		out = append(out, specs.Mount{
			Destination: f, Type: "bind", Source: filepath.Join(dir, f),
			Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	return out
}

// lxcfs is the driver's LXCFS daemon: one per driver state directory,
// mounted at <StateDir>/lxcfs/mnt. It runs in its own session, so it
// outlives an agent restart (running capsules keep reading through their
// bind mounts) and the next driver adopts it; Close stops it once no
// capsule of the driver is left.
type lxcfs struct {
	bin, dir, mnt, pidFile string
	log                    *slog.Logger
	stopped                atomic.Bool
}

func newLXCFS(stateDir, bin string, log *slog.Logger) *lxcfs {
	dir := filepath.Join(stateDir, "lxcfs")
	return &lxcfs{bin: bin, dir: dir, mnt: filepath.Join(dir, "mnt"), pidFile: filepath.Join(dir, "lxcfs.pid"), log: log}
}

// start adopts a healthy daemon of an earlier driver on the same state
// directory, or cleans up after a dead one (kills it, lazily unmounts its
// FUSE mount) and starts a new one.
func (l *lxcfs) start(ctx context.Context) error {
	bin, err := exec.LookPath(l.bin)
	if err != nil {
		return fmt.Errorf("lxcfs not found (apt-get install lxcfs): %w", err)
	}
	if err := os.MkdirAll(l.mnt, 0o755); err != nil {
		return err
	}
	if pid := l.pid(); pid > 0 && l.healthy() {
		l.log.Info("lxcfs adopted", "pid", pid, "mount", l.mnt)
		return nil
	}
	l.kill()
	log, err := os.OpenFile(filepath.Join(l.dir, "lxcfs.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	// -f: the daemon stays this process's child until the driver exits
	// (Setsid: a terminal's Ctrl-C does not reach it); --enable-cfs: CPU
	// counts from the CFS quota; -l: per-cgroup load averages.
	cmd := exec.Command(bin, "-f", "--enable-cfs", "-l", "-p", l.pidFile, l.mnt) //nolint:gosec // configured binary
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start lxcfs: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !l.healthy() {
		select {
		case err := <-exited:
			out, _ := os.ReadFile(filepath.Join(l.dir, "lxcfs.log"))
			return fmt.Errorf("lxcfs exited: %w: %s", err, lastLines(string(out), 5))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return ctx.Err()
		case <-deadline.C:
			_ = cmd.Process.Kill()
			l.unmount()
			return errors.New("lxcfs did not mount within 10s")
		case <-tick.C:
		}
	}
	l.log.Info("lxcfs started", "pid", cmd.Process.Pid, "mount", l.mnt)
	return nil
}

// healthy reports whether the daemon answers and serves every file.
func (l *lxcfs) healthy() bool {
	if !isMountPoint(l.mnt) {
		return false
	}
	for _, f := range lxcfsFiles {
		b := make([]byte, 64)
		fd, err := os.Open(filepath.Join(l.mnt, f))
		if err != nil {
			return false
		}
		_, err = fd.Read(b)
		_ = fd.Close()
		if err != nil {
			return false
		}
	}
	return true
}

// answers is the cheap check before each bundle: one getattr the daemon
// must serve (a dead daemon's mount fails it with ENOTCONN).
func (l *lxcfs) answers() bool {
	_, err := os.Stat(filepath.Join(l.mnt, "proc", "uptime"))
	return err == nil
}

// pid returns the daemon's pid from its pid file when that process is
// alive and is an lxcfs serving this mount point (not a reused pid).
func (l *lxcfs) pid() int {
	b, err := os.ReadFile(l.pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "lxcfs" || !slices.Contains(args, l.mnt) {
		return 0
	}
	return pid
}

// kill stops the daemon (if any) and removes its mount.
func (l *lxcfs) kill() {
	if pid := l.pid(); pid > 0 {
		_ = unix.Kill(pid, unix.SIGTERM)
		for i := 0; i < 100 && l.pid() == pid; i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if l.pid() == pid {
			_ = unix.Kill(pid, unix.SIGKILL)
			for i := 0; i < 100 && l.pid() == pid; i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	l.unmount()
	_ = os.Remove(l.pidFile)
}

// unmount detaches the FUSE mount (also a dead daemon's, whose mount
// answers ENOTCONN).
func (l *lxcfs) unmount() {
	for i := 0; i < 4 && isMountPoint(l.mnt); i++ {
		if err := unix.Unmount(l.mnt, unix.MNT_DETACH); err != nil {
			l.log.Warn("unmount lxcfs", "mount", l.mnt, "err", err)
			return
		}
	}
}

// stop stops the daemon and removes its directory, once.
func (l *lxcfs) stop() {
	if l.stopped.Swap(true) {
		return
	}
	l.kill()
	_ = os.RemoveAll(l.dir)
}

// isMountPoint reports whether path is a mount point in this mount
// namespace (from mountinfo, so a dead FUSE mount counts).
func isMountPoint(path string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true
		}
	}
	return false
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// cpuPinner hands out the CPUs a capsule with fewer vCPUs than the host
// runs on, round robin over the CPUs the agent may use, so that
// sched_getaffinity (nproc, Go's NumCPU, os.sched_getaffinity) counts the
// capsule's vCPUs; the CFS quota still bounds its time.
type cpuPinner struct {
	cpus []int
	next atomic.Uint32
}

func newCPUPinner() *cpuPinner {
	var set unix.CPUSet
	p := &cpuPinner{}
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return p
	}
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			p.cpus = append(p.cpus, i)
		}
	}
	return p
}

// cpus returns the cpuset list ("1" or "0,1") for vcpus, or "" when the
// capsule may use every CPU.
func (p *cpuPinner) cpusFor(vcpus int) string {
	if vcpus <= 0 || vcpus >= len(p.cpus) {
		return ""
	}
	start := int(p.next.Add(uint32(vcpus))) - vcpus //nolint:gosec // small
	picked := make([]int, 0, vcpus)
	for i := range vcpus {
		picked = append(picked, p.cpus[(start+i)%len(p.cpus)])
	}
	slices.Sort(picked)
	parts := make([]string, len(picked))
	for i, c := range picked {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

// startLXCFS starts (or adopts) the driver's lxcfs unless disabled; a
// failure is a visible warning, and capsules then run without it.
func (d *Driver) startLXCFS(ctx context.Context) {
	if d.cfg.DisableLXCFS {
		return
	}
	bin := d.cfg.LXCFSPath
	if bin == "" {
		bin = "lxcfs"
	}
	l := newLXCFS(d.cfg.StateDir, bin, d.log)
	if err := l.start(ctx); err != nil {
		d.log.Warn("LXCFS unavailable: capsules will see the host's memory, CPUs and uptime in /proc", "err", err)
		return
	}
	d.lxcfs = l
	d.pin = newCPUPinner()
}

// LXCFS reports whether capsules get LXCFS's view of their own memory,
// CPUs and uptime.
func (d *Driver) LXCFS() bool { return d.lxcfs != nil }

// lxcfsMount is the mount point new bundles bind files from: "" when LXCFS
// is off or its daemon stopped answering (then a warning, and the capsule
// starts without it rather than failing on a dead mount).
func (d *Driver) lxcfsMount() string {
	if d.lxcfs == nil {
		return ""
	}
	if !d.lxcfs.answers() {
		d.log.Warn("LXCFS mount not answering: capsule created without it", "mount", d.lxcfs.mnt)
		return ""
	}
	return d.lxcfs.mnt
}

// capsuleCPUs is the cpuset of a capsule with vcpus vCPUs (with LXCFS on).
func (d *Driver) capsuleCPUs(vcpus int) string {
	if d.lxcfs == nil || d.pin == nil {
		return ""
	}
	return d.pin.cpusFor(vcpus)
}

// stopLXCFSIfIdle stops the daemon once the driver is closed and none of
// its runc containers is left (running or frozen capsules read through
// it; a capsule paused to disk does not); otherwise it stays for the next
// driver on the same state directory.
func (d *Driver) stopLXCFSIfIdle() {
	if d.lxcfs == nil || !d.closed.Load() {
		return
	}
	if entries, err := os.ReadDir(d.runcRoot); err == nil && len(entries) == 0 {
		d.lxcfs.stop()
	}
}
