package container

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// deniedSyscalls fail with EPERM in every capsule: kernel module and kexec
// loading, mounting and namespace games, kernel keyring, BPF and perf,
// io_uring, clock setting, swap, reboot, raw I/O ports, handle-based opens
// and other calls with a history of container escapes. Everything else is
// allowed; the dropped capabilities stop most of the rest.
var deniedSyscalls = []string{
	"acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_settime",
	"create_module", "delete_module", "finit_module", "fsconfig", "fsmount",
	"fsopen", "fspick", "get_kernel_syms", "init_module",
	"io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
	"kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
	"mount", "mount_setattr", "move_mount", "move_pages",
	"name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree",
	"perf_event_open", "pivot_root", "quotactl", "quotactl_fd", "reboot",
	"request_key", "setns", "settimeofday", "stime",
	"swapoff", "swapon", "syslog", "umount", "umount2", "unshare", "uselib",
	"userfaultfd", "vhangup", "fanotify_init",
}

// nsFlagList are the clone flags that create namespaces.
var nsFlagList = []uint64{
	unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
	unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP,
}

// defaultSeccomp returns the capsule seccomp profile: allow by default, deny
// the calls above, refuse clone with namespace flags, and make clone3 (whose
// flags seccomp cannot inspect) fail with ENOSYS so libc falls back to clone.
func defaultSeccomp() *specs.LinuxSeccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	syscalls := []specs.LinuxSyscall{
		{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
		{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
	}
	// One rule per flag: (flags & f) == f denies; rules are ORed.
	for _, f := range nsFlagList {
		syscalls = append(syscalls, specs.LinuxSyscall{
			Names:    []string{"clone"},
			Action:   specs.ActErrno,
			ErrnoRet: &eperm,
			Args:     []specs.LinuxSeccompArg{{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}},
		})
	}
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32, specs.ArchAARCH64, specs.ArchARM},
		Syscalls:      syscalls,
	}
}
