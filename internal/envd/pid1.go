package envd

import (
	"bufio"
	"errors"
	"log/slog"
	"os"
	goruntime "runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// earlyMount is a filesystem envd mounts when it boots a capsule as PID 1
// and nothing mounted it yet (Firecracker guests; runc mounts these itself).
type earlyMount struct {
	source, target, fstype, data string
	flags                        uintptr
}

var earlyMounts = []earlyMount{
	{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
	{"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620", unix.MS_NOSUID | unix.MS_NOEXEC},
	{"tmpfs", "/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
	{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
}

// SetupPID1 prepares a bare guest when envd is its init: it mounts the
// essential pseudo filesystems that are not mounted yet. Failures are
// logged, not fatal: envd still serves whatever works.
func SetupPID1(log *slog.Logger) {
	mounted := mountPoints("/proc/self/mountinfo")
	for _, m := range earlyMounts {
		if mounted[m.target] {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			log.Warn("pid1: cannot create mount point", "target", m.target, "err", err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Warn("pid1: mount failed", "target", m.target, "err", err)
			continue
		}
		if m.target == "/proc" {
			mounted = mountPoints("/proc/self/mountinfo")
		}
	}
	if _, err := os.Lstat("/dev/ptmx"); errors.Is(err, os.ErrNotExist) {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
}

// mountPoints returns the set of mount points listed in a mountinfo file.
func mountPoints(path string) map[string]bool {
	out := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out[fields[4]] = true
		}
	}
	return out
}

// Protect makes envd's own process non-dumpable: processes without
// CAP_SYS_PTRACE in envd's user namespace (capsule root keeps no such
// capability) can then neither ptrace it nor read /proc/<envd>/mem,
// environ, maps or fds, so capsule code cannot stop envd or read its
// access token. The flag is per process image: the processes envd starts
// become dumpable again at their execve, so strace and gdb of the user's
// own processes keep working.
func Protect() error {
	return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}

// ReservedThreads is how many idle OS threads envd keeps from its start
// (ReserveThreads).
const ReservedThreads = 32

// ReserveThreads makes the Go runtime start n OS threads now and keep them
// idle for later. A capsule at its process limit (the pids cgroup counts
// threads, and a fork bomb takes every free slot) must not take envd down
// with it: when a goroutine blocks in a system call (a read of LXCFS's
// FUSE files in /proc, a slow disk), the runtime hands its processor to
// another thread, and if it has to create one then, the kernel's EAGAIN is
// fatal to a Go program. Idle threads are reused instead, and the runtime
// never frees them (a goroutine unlocks its thread before it ends).
func ReserveThreads(n int) {
	var ready, done sync.WaitGroup
	release := make(chan struct{})
	ready.Add(n)
	done.Add(n)
	for range n {
		go func() {
			defer done.Done()
			goruntime.LockOSThread() // parked while locked: its thread is its own
			ready.Done()
			<-release
			goruntime.UnlockOSThread() // ends unlocked: the thread stays, idle
		}()
	}
	ready.Wait()
	close(release)
	done.Wait()
}
