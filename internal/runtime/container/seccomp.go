package container

import (
	goruntime "runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The capsule seccomp profile is an allow-list: a system call not named
// below fails with EPERM. The names come from the kernel's syscall tables
// (arch/x86/entry/syscalls/syscall_64.tbl for x86-64, the generic
// include/uapi/asm-generic/unistd.h / scripts/syscall.tbl for arm64, and
// syscall_32.tbl for 32-bit x86 programs); runc resolves them per
// architecture with libseccomp and skips a name an architecture (or the
// installed libseccomp) does not know. runc also makes every call numbered
// above the highest one it resolved return ENOSYS, so a libc probing a
// system call newer than this list falls back to the older one.
//
// Left out on purpose (EPERM): mount and the new mount API, pivot_root,
// chroot games beyond chroot itself, module loading, kexec, reboot, swap,
// acct, quotactl, the kernel keyring, bpf, perf_event_open, userfaultfd,
// io_uring (a large, often-exploited kernel surface; programs fall back to
// epoll and thread pools), setns and namespace-creating unshare/clone,
// handle-based opens (open_by_handle_at escapes a bind mount),
// fanotify, kcmp, pidfd_getfd, process_madvise, move_pages and
// migrate_pages, clock and time setting, iopl/ioperm, modify_ldt, syslog,
// vhangup, lookup_dcookie, memfd_secret, and the obsolete calls.

// syscallTable names a kernel syscall table the unit tests check names
// against.
type syscallTable string

const (
	tableX8664 syscallTable = "x86_64" // arch/x86/entry/syscalls/syscall_64.tbl
	tableARM64 syscallTable = "arm64"  // include/uapi/asm-generic/unistd.h
	tableI386  syscallTable = "i386"   // arch/x86/entry/syscalls/syscall_32.tbl
)

// syscallGroup is a set of allowed calls; every name is in each of tables.
type syscallGroup struct {
	tables []syscallTable
	names  []string
}

var (
	both    = []syscallTable{tableX8664, tableARM64}
	x86Only = []syscallTable{tableX8664}
	i386    = []syscallTable{tableI386}
)

// allowedSyscalls is the allow-list, one group per purpose.
var allowedSyscalls = []syscallGroup{
	// File descriptors and I/O: reading, writing, vectored and positioned
	// I/O, zero-copy between descriptors, polling and event loops.
	{both, []string{
		"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
		"preadv2", "pwritev2", "close", "close_range", "dup", "dup3", "fcntl", "ioctl",
		"lseek", "sendfile", "splice", "tee", "vmsplice", "copy_file_range",
		"pipe2", "eventfd2", "signalfd4", "epoll_create1", "epoll_ctl", "epoll_pwait",
		"epoll_pwait2", "ppoll", "pselect6", "timerfd_create", "timerfd_settime",
		"timerfd_gettime", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
		"memfd_create",
	}},
	// Files and directories: open, stat, create, rename, link, remove,
	// permissions, owners, times, extended attributes, sync, space.
	{both, []string{
		"openat", "openat2", "newfstatat", "fstat", "statx", "statfs", "fstatfs",
		"faccessat", "faccessat2", "getdents64", "getcwd", "chdir", "fchdir", "chroot",
		"mkdirat", "mknodat", "unlinkat", "renameat", "renameat2", "linkat", "symlinkat",
		"readlinkat", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "umask",
		"utimensat", "truncate", "ftruncate", "fallocate", "fadvise64", "readahead",
		"flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "cachestat",
		"setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr",
		"listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
		"fremovexattr", "setxattrat", "getxattrat", "listxattrat", "removexattrat",
		"file_getattr", "file_setattr",
	}},
	// Memory: mappings, protection, locking (bounded by RLIMIT_MEMLOCK and
	// the memory cgroup), NUMA policy of one's own pages (JVMs and
	// databases ask), protection keys, membarrier (JITs), sealing and CET
	// shadow stacks (newer glibc).
	{both, []string{
		"brk", "mmap", "munmap", "mprotect", "mremap", "msync", "mincore", "madvise",
		"mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages",
		"mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node",
		"pkey_mprotect", "pkey_alloc", "pkey_free", "membarrier", "mseal",
		"map_shadow_stack",
	}},
	// Processes and threads: exec, exit, wait, signals to one's own
	// processes, thread setup, futexes, restartable sequences, limits,
	// scheduling, identity (uid/gid changes are bounded by the capsule's
	// capabilities), session and process groups. clone is allowed below
	// only without namespace flags; clone3 answers ENOSYS.
	{both, []string{
		"execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill",
		"tgkill", "getpid", "getppid", "gettid", "set_tid_address", "set_robust_list",
		"get_robust_list", "futex", "futex_waitv", "futex_wake", "futex_wait",
		"futex_requeue", "rseq", "restart_syscall", "prctl", "prlimit64", "getrlimit",
		"setrlimit", "getrusage", "times", "getpriority", "setpriority", "sched_yield",
		"sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
		"sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
		"sched_get_priority_min", "sched_rr_get_interval", "sched_getattr",
		"sched_setattr", "getcpu", "ioprio_get", "ioprio_set", "setpgid", "getpgid",
		"getsid", "setsid", "capget", "capset", "getuid", "geteuid", "getgid", "getegid",
		"getresuid", "getresgid", "setuid", "setgid", "setreuid", "setregid",
		"setresuid", "setresgid", "setfsuid", "setfsgid", "getgroups", "setgroups",
		"pidfd_open", "pidfd_send_signal", "uname", "sysinfo", "getrandom",
	}},
	// Debugging one's own processes: strace, gdb and crash reporters. The
	// kernel's ptrace access check (same uid, no CAP_SYS_PTRACE in the
	// capsule, Yama) decides whom; process_vm_* use the same check.
	{both, []string{"ptrace", "process_vm_readv", "process_vm_writev"}},
	// Self-sandboxing: further seccomp filters and Landlock can only
	// take rights away (browsers, sandboxed builds and systemd use them).
	{both, []string{"seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"}},
	// Signals: handlers, masks, waiting, queued signals, alternate stacks.
	{both, []string{
		"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
		"rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend",
		"sigaltstack",
	}},
	// Time and timers: reading clocks, sleeping, interval and POSIX timers.
	{both, []string{
		"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
		"getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
		"timer_getoverrun", "timer_delete",
	}},
	// Inter-process communication inside the capsule's own IPC namespace:
	// System V shared memory, semaphores and queues (PostgreSQL, Oracle
	// tools), POSIX message queues.
	{both, []string{
		"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semctl", "semtimedop",
		"msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
		"mq_timedreceive", "mq_notify", "mq_getsetattr",
	}},
	// Networking: sockets of every family the capsule's capabilities allow
	// (no CAP_NET_RAW, so no raw or packet sockets).
	{both, []string{
		"socket", "socketpair", "bind", "listen", "accept", "accept4", "connect",
		"getsockname", "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg",
		"sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt",
	}},
	// Linux native asynchronous I/O (libaio: MySQL/InnoDB, some JVM I/O).
	{both, []string{"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"}},
	// x86-64's older calls that arm64 never had (its libc uses the *at
	// forms above), and x86's thread-pointer and TLS calls.
	{x86Only, []string{
		"open", "creat", "stat", "lstat", "access", "pipe", "select", "poll", "dup2",
		"rename", "mkdir", "rmdir", "link", "unlink", "symlink", "readlink", "chmod",
		"chown", "lchown", "utime", "utimes", "futimesat", "getdents", "epoll_create",
		"epoll_wait", "inotify_init", "eventfd", "signalfd", "time", "alarm", "pause",
		"fork", "vfork", "getpgrp", "arch_prctl", "set_thread_area", "get_thread_area",
		"mknod",
	}},
	// 32-bit x86 programs (i386 and x32 ABIs on an x86-64 host): the calls
	// whose 32-bit names differ (64-bit file offsets, 32-bit uids,
	// time64 variants, the socketcall and ipc multiplexers).
	{i386, []string{
		"_llseek", "mmap2", "fcntl64", "fstat64", "stat64", "lstat64", "fstatat64",
		"statfs64", "fstatfs64", "truncate64", "ftruncate64", "sendfile64",
		"fadvise64_64", "socketcall", "ipc", "_newselect", "waitpid", "sigreturn",
		"ugetrlimit", "getuid32", "geteuid32", "getgid32", "getegid32", "setuid32",
		"setgid32", "setreuid32", "setregid32", "setresuid32", "getresuid32",
		"setresgid32", "getresgid32", "setfsuid32", "setfsgid32", "getgroups32",
		"setgroups32", "chown32", "fchown32", "lchown32", "clock_gettime64",
		"clock_getres_time64", "clock_nanosleep_time64", "timer_settime64",
		"timer_gettime64", "timerfd_settime64", "timerfd_gettime64",
		"utimensat_time64", "pselect6_time64", "ppoll_time64", "io_pgetevents_time64",
		"recvmmsg_time64", "mq_timedsend_time64", "mq_timedreceive_time64",
		"semtimedop_time64", "rt_sigtimedwait_time64", "futex_time64",
		"sched_rr_get_interval_time64", "sigaction", "sigprocmask", "sigsuspend",
		"sigpending", "nice", "sgetmask", "ssetmask", "signal",
	}},
}

// nsFlags are the clone/unshare flags that create namespaces.
const nsFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// Personalities a program may select: the Linux default, 32-bit uname
// (linux32), a 2.6-style version string (old build scripts), address
// randomisation off (gdb's default for the programs it starts), and the
// query value 0xffffffff.
var allowedPersonalities = []uint64{
	0x0,        // PER_LINUX
	0x8,        // PER_LINUX32
	0x20000,    // UNAME26
	0x20008,    // UNAME26 | PER_LINUX32
	0x40000,    // ADDR_NO_RANDOMIZE
	0x40008,    // ADDR_NO_RANDOMIZE | PER_LINUX32
	0xffffffff, // query
}

// seccompArchitectures are the ABIs the filter covers on this host: the
// native 64-bit one (x86-64 or arm64), plus i386 and x32 on x86-64 with
// compat32 (Config.SeccompCompat32). runc compiles the filter at every
// capsule start and every architecture multiplies that work: the two
// 32-bit x86 ABIs cost about 9 ms of CPU per start here, so they are off
// by default. A call from an ABI not listed is refused.
func seccompArchitectures(compat32 bool) []specs.Arch {
	switch goruntime.GOARCH {
	case "amd64":
		if compat32 {
			return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
		}
		return []specs.Arch{specs.ArchX86_64}
	case "arm64":
		// 32-bit ARM programs would need ARM-private calls this list
		// does not carry.
		return []specs.Arch{specs.ArchAARCH64}
	default:
		return nil // the native ABI only
	}
}

// allowedNames returns every allowed name (without the conditional ones);
// the 32-bit x86 names only with compat32.
func allowedNames(compat32 bool) []string {
	var out []string
	for _, g := range allowedSyscalls {
		if !compat32 && len(g.tables) == 1 && g.tables[0] == tableI386 {
			continue
		}
		out = append(out, g.names...)
	}
	return out
}

// defaultSeccomp returns the capsule seccomp profile: EPERM by default,
// the allow-list above, clone and unshare only without namespace flags,
// personality only with the values above, and clone3 (whose flags live in
// memory seccomp cannot read) failing with ENOSYS so libc falls back to
// clone.
func defaultSeccomp(compat32 bool) *specs.LinuxSeccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	syscalls := []specs.LinuxSyscall{
		{Names: allowedNames(compat32), Action: specs.ActAllow},
		{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		// (flags & nsFlags) == 0; clone's flags are argument 0 on x86 and arm.
		{Names: []string{"clone", "unshare"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
			{Index: 0, Value: nsFlags, ValueTwo: 0, Op: specs.OpMaskedEqual},
		}},
	}
	for _, p := range allowedPersonalities {
		syscalls = append(syscalls, specs.LinuxSyscall{
			Names:  []string{"personality"},
			Action: specs.ActAllow,
			Args:   []specs.LinuxSeccompArg{{Index: 0, Value: p, Op: specs.OpEqualTo}},
		})
	}
	return &specs.LinuxSeccomp{
		DefaultAction:   specs.ActErrno,
		DefaultErrnoRet: &eperm,
		Architectures:   seccompArchitectures(compat32),
		Syscalls:        syscalls,
	}
}
