package container

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// loadTable reads testdata/syscalls_<name>.txt: the names of one
// architecture's kernel syscall table, one a line.
func loadTable(t *testing.T, name syscallTable) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "syscalls_"+string(name)+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			out[line] = true
		}
	}
	if len(out) < 250 {
		t.Fatalf("table %s has only %d names", name, len(out))
	}
	return out
}

func TestSeccompProfileWellFormed(t *testing.T) {
	for _, compat32 := range []bool{false, true} {
		p := defaultSeccomp(compat32)
		if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet == nil || *p.DefaultErrnoRet != uint(unix.EPERM) {
			t.Errorf("default action %s/%v, want SCMP_ACT_ERRNO with EPERM", p.DefaultAction, p.DefaultErrnoRet)
		}
		native := map[string]specs.Arch{"amd64": specs.ArchX86_64, "arm64": specs.ArchAARCH64}[goruntime.GOARCH]
		if native != "" && !slices.Contains(p.Architectures, native) {
			t.Errorf("native architecture %s missing from %v", native, p.Architectures)
		}
		seen := map[string]bool{}
		for i, s := range p.Syscalls {
			if len(s.Names) == 0 {
				t.Errorf("rule %d has no names", i)
			}
			switch s.Action {
			case specs.ActAllow:
			case specs.ActErrno:
				if s.ErrnoRet == nil {
					t.Errorf("rule %d (%v): errno action without errno", i, s.Names)
				}
			default:
				t.Errorf("rule %d (%v): unexpected action %s", i, s.Names, s.Action)
			}
			for _, n := range s.Names {
				if n == "" || strings.TrimSpace(n) != n {
					t.Errorf("rule %d: bad name %q", i, n)
				}
				if len(s.Args) == 0 {
					if seen[n] {
						t.Errorf("%s listed twice without conditions", n)
					}
					seen[n] = true
				}
			}
			for _, a := range s.Args {
				if a.Index > 5 {
					t.Errorf("rule %d: argument index %d", i, a.Index)
				}
			}
		}
		// The profile survives the JSON runc reads.
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var back specs.LinuxSeccomp
		if err := json.Unmarshal(b, &back); err != nil || len(back.Syscalls) != len(p.Syscalls) {
			t.Fatalf("round trip: %v", err)
		}
		if n := len(allowedNames(compat32)); n < 250 || n > 420 {
			t.Errorf("%d allowed names: the list looks wrong", n)
		}
	}
}

// Every name is in the kernel table of each architecture its group says.
func TestSeccompNamesExistInKernelTables(t *testing.T) {
	tables := map[syscallTable]map[string]bool{}
	for _, n := range []syscallTable{tableX8664, tableARM64, tableI386} {
		tables[n] = loadTable(t, n)
	}
	for _, g := range allowedSyscalls {
		for _, name := range g.names {
			for _, tb := range g.tables {
				if !tables[tb][name] {
					t.Errorf("%s is not in the %s syscall table", name, tb)
				}
			}
		}
	}
	for _, name := range []string{"clone", "clone3", "unshare", "personality"} {
		if !tables[tableX8664][name] || !tables[tableARM64][name] {
			t.Errorf("%s missing from a table", name)
		}
	}
	// Each common call of the two 64-bit tables is either allowed or
	// named as refused here, so a new table entry is a conscious choice.
	allowed := map[string]bool{}
	for _, n := range allowedNames(true) {
		allowed[n] = true
	}
	for name := range tables[tableARM64] {
		if tables[tableX8664][name] && !allowed[name] && !refusedOnPurpose[name] {
			t.Errorf("%s (in both tables) is neither allowed nor in refusedOnPurpose", name)
		}
	}
}

// refusedOnPurpose are the calls of both 64-bit tables the profile does
// not allow unconditionally.
var refusedOnPurpose = map[string]bool{
	// conditional rules
	"clone": true, "clone3": true, "unshare": true, "personality": true,
	// mounts and namespaces
	"mount": true, "umount2": true, "pivot_root": true, "setns": true, "open_tree": true,
	"move_mount": true, "fsopen": true, "fsconfig": true, "fsmount": true, "fspick": true,
	"mount_setattr": true, "open_tree_attr": true, "statmount": true, "listmount": true,
	// kernel modules, kexec, reboot, swap, accounting, quotas
	"init_module": true, "finit_module": true, "delete_module": true, "kexec_load": true,
	"kexec_file_load": true, "reboot": true, "swapon": true, "swapoff": true, "acct": true,
	"quotactl": true, "quotactl_fd": true, "nfsservctl": true,
	// kernel keyring, BPF, perf, userfaultfd, io_uring
	"add_key": true, "request_key": true, "keyctl": true, "bpf": true, "perf_event_open": true,
	"userfaultfd": true, "io_uring_setup": true, "io_uring_enter": true, "io_uring_register": true,
	// handle-based opens, fanotify, cross-process inspection beyond ptrace
	"open_by_handle_at": true, "name_to_handle_at": true, "fanotify_init": true,
	"fanotify_mark": true, "kcmp": true, "pidfd_getfd": true, "process_madvise": true,
	"process_mrelease": true, "move_pages": true, "migrate_pages": true,
	// clocks, host identity, logs, terminals
	"settimeofday": true, "clock_settime": true, "clock_adjtime": true, "adjtimex": true,
	"sethostname": true, "setdomainname": true, "syslog": true, "vhangup": true,
	"lookup_dcookie": true,
	// secret memory, LSM attributes
	"memfd_secret": true, "lsm_get_self_attr": true, "lsm_set_self_attr": true,
	"lsm_list_modules": true,
}

// dangerous are calls no capsule may make.
var dangerous = []string{
	"mount", "umount2", "pivot_root", "init_module", "finit_module", "delete_module",
	"kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
	"request_key", "setns", "open_by_handle_at", "name_to_handle_at", "userfaultfd",
	"reboot", "swapon", "swapoff", "acct", "io_uring_setup", "io_uring_enter",
	"io_uring_register", "fsopen", "fsmount", "move_mount", "open_tree", "mount_setattr",
	"kcmp", "pidfd_getfd", "settimeofday", "clock_settime", "syslog", "quotactl",
	"iopl", "ioperm", "modify_ldt", "uselib", "create_module", "umount", "stime",
}

func TestSeccompDangerousCallsAbsent(t *testing.T) {
	for _, compat32 := range []bool{false, true} {
		p := defaultSeccomp(compat32)
		for _, s := range p.Syscalls {
			if s.Action != specs.ActAllow {
				continue
			}
			for _, n := range s.Names {
				if slices.Contains(dangerous, n) {
					t.Errorf("dangerous call %s is allowed (conditions %v)", n, s.Args)
				}
			}
		}
		for _, s := range p.Syscalls {
			for _, n := range s.Names {
				switch n {
				case "clone", "unshare":
					// Allowed only when no namespace flag is set.
					if s.Action != specs.ActAllow || len(s.Args) != 1 {
						t.Fatalf("%s rule %+v", n, s)
					}
					a := s.Args[0]
					if a.Index != 0 || a.Op != specs.OpMaskedEqual || a.ValueTwo != 0 {
						t.Errorf("%s condition %+v, want arg0 & mask == 0", n, a)
					}
					for _, f := range []uint64{
						unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
						unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP, unix.CLONE_NEWTIME,
					} {
						if a.Value&f != f {
							t.Errorf("%s mask %#x lets namespace flag %#x through", n, a.Value, f)
						}
					}
				case "clone3":
					if s.Action != specs.ActErrno || s.ErrnoRet == nil || *s.ErrnoRet != uint(unix.ENOSYS) {
						t.Errorf("clone3 rule %+v, want ENOSYS", s)
					}
				case "personality":
					if len(s.Args) != 1 || s.Args[0].Op != specs.OpEqualTo {
						t.Errorf("personality allowed without a value check: %+v", s)
					} else if s.Args[0].Value&0x0400000 != 0 && s.Args[0].Value != 0xffffffff {
						t.Errorf("personality READ_IMPLIES_EXEC allowed: %#x", s.Args[0].Value)
					}
				}
			}
		}
	}
}

func TestSeccompProfileOff(t *testing.T) {
	s := ociSpec(bundleParams{Hostname: "cl-x", NoSeccomp: true})
	if s.Linux.Seccomp != nil {
		t.Error("NoSeccomp still sets a profile")
	}
	if s = ociSpec(bundleParams{Hostname: "cl-x"}); s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
		t.Error("default bundle has no allow-list profile")
	}
}

func TestLXCFSMountsInBundle(t *testing.T) {
	s := ociSpec(bundleParams{Hostname: "cl-x", LXCFS: "/state/lxcfs/mnt", Cpus: "1"})
	var got []string
	for _, m := range s.Mounts {
		if m.Type == "bind" && strings.HasPrefix(m.Source, "/state/lxcfs/mnt/") {
			if m.Source != "/state/lxcfs/mnt"+m.Destination {
				t.Errorf("mount %s from %s", m.Destination, m.Source)
			}
			got = append(got, m.Destination)
		}
	}
	for _, want := range []string{"/proc/meminfo", "/proc/cpuinfo", "/proc/uptime", "/proc/loadavg", "/proc/stat", "/proc/diskstats", "/proc/swaps", "/sys/devices/system/cpu/online"} {
		if !slices.Contains(got, want) {
			t.Errorf("no lxcfs mount over %s", want)
		}
	}
	if s.Linux.Resources.CPU.Cpus != "1" {
		t.Errorf("cpuset %q", s.Linux.Resources.CPU.Cpus)
	}
	if s = ociSpec(bundleParams{Hostname: "cl-x"}); len(lxcfsMounts("")) != 0 || s.Linux.Resources.CPU.Cpus != "" {
		t.Error("lxcfs mounts or a cpuset without lxcfs")
	}
}

func TestCPUPinnerRoundRobin(t *testing.T) {
	p := &cpuPinner{cpus: []int{0, 1, 2, 3}}
	var got []string
	for range 5 {
		got = append(got, p.cpusFor(1))
	}
	if strings.Join(got, " ") != "0 1 2 3 0" {
		t.Errorf("1-vCPU picks %v", got)
	}
	if c := p.cpusFor(2); c != "1,2" {
		t.Errorf("2-vCPU pick %q", c)
	}
	if c := p.cpusFor(4); c != "" {
		t.Errorf("all-CPU capsule pinned to %q", c)
	}
}
