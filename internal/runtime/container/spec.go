package container

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// EnvdPath is where envd is bind-mounted (read-only) inside every capsule.
const EnvdPath = "/usr/local/bin/envd"

// defaultCaps is the capability set of a capsule's processes: Docker's
// default set without NET_RAW and MKNOD. Everything else is dropped.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID",
	"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
	"/proc/sysrq-trigger", "/sys/firmware", "/sys/devices/virtual/powercap",
	"/sys/kernel/debug", "/sys/kernel/security",
}

var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// bundleParams is everything the OCI config of one capsule depends on.
type bundleParams struct {
	Hostname    string
	Rootfs      string
	Envd        string // host path of the envd binary
	Netns       string
	CgroupsPath string
	VCPUs       int
	MemoryMB    int
	PidsLimit   int64
	Env         map[string]string
	// IDBase, if not 0, runs the capsule in a user namespace mapping ids
	// 0..65535 to IDBase.. on the host (userns.go).
	IDBase uint32
	// NoSeccomp leaves the capsule without a seccomp filter (benchmarks).
	NoSeccomp bool
	// SeccompCompat32 extends the filter to 32-bit x86 programs.
	SeccompCompat32 bool
	// LXCFS is the mount point of the agent's lxcfs ("" = none): its
	// files are bind-mounted over /proc and /sys files (lxcfs.go).
	LXCFS string
	// Cpus pins the capsule to these CPUs (cpuset list, "" = all).
	Cpus string
	// Userns, if set, is the pinned user namespace (made by the driver,
	// owning the capsule's network namespace) runc joins instead of
	// making one.
	Userns string
}

// ociSpec builds the runtime-spec document runc runs.
func ociSpec(p bundleParams) *specs.Spec {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"WRENN_CAPSULE_ID=" + p.Hostname,
	}
	for _, k := range slices.Sorted(maps.Keys(p.Env)) {
		env = append(env, k+"="+p.Env[k])
	}
	mem := int64(p.MemoryMB) << 20
	period := uint64(100000)
	quota := int64(p.VCPUs) * int64(period)
	pids := p.PidsLimit
	swappiness := uint64(0)
	oomAdj := 500
	ro := []string{"nosuid", "noexec", "nodev", "ro"}
	s := &specs.Spec{
		Version:  specs.Version,
		Hostname: p.Hostname,
		Root:     &specs.Root{Path: p.Rootfs},
		Process: &specs.Process{
			Args:            []string{EnvdPath},
			Env:             env,
			Cwd:             "/",
			NoNewPrivileges: true,
			OOMScoreAdj:     &oomAdj,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  defaultCaps,
				Effective: defaultCaps,
				Permitted: defaultCaps,
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: ro},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: append([]string{"relatime"}, ro...)},
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755", "size=65536k"}},
			{Destination: EnvdPath, Type: "bind", Source: p.Envd, Options: []string{"bind", "ro", "nosuid", "nodev"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: p.CgroupsPath,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: p.Netns},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory: &specs.LinuxMemory{
					Limit: &mem,
					// swap limit = memory limit: memory+swap may not exceed
					// the memory limit, so there is no swap escape.
					Swap:       &mem,
					Swappiness: &swappiness,
				},
				CPU:  &specs.LinuxCPU{Quota: &quota, Period: &period, Cpus: p.Cpus},
				Pids: &specs.LinuxPids{Limit: pids},
			},
			Seccomp:           capsuleSeccomp(p),
			MaskedPaths:       maskedPaths,
			ReadonlyPaths:     readonlyPaths,
			RootfsPropagation: "private",
		},
	}
	s.Mounts = append(s.Mounts, lxcfsMounts(p.LXCFS)...)
	if p.IDBase != 0 {
		userNS(s, p.IDBase, p.Userns)
	}
	return s
}

// capsuleSeccomp is the capsule's seccomp filter (seccomp.go), or none.
func capsuleSeccomp(p bundleParams) *specs.LinuxSeccomp {
	if p.NoSeccomp {
		return nil
	}
	return defaultSeccomp(p.SeccompCompat32)
}

// userNS puts the capsule in its own user namespace (issue 11): the one
// pinned at path, made by the driver with the capsule's network namespace
// inside it (userns.go, newOwnedNetns), or a new one if path is "". The
// mappings are the same either way (runc wants them also when it joins).
// In a joined namespace capsule root owns its network namespace and
// mounts its own sysfs, as without user namespaces. A new one (a capsule
// from before owned namespaces) cannot mount a sysfs of a network it does
// not own: /sys is the host's, bound read-only recursively (capsule root
// is an unprivileged host uid there; what the kernel exposes is the same
// read-only view).
func userNS(s *specs.Spec, base uint32, path string) {
	s.Linux.Namespaces = append([]specs.LinuxNamespace{{Type: specs.UserNamespace, Path: path}}, s.Linux.Namespaces...)
	s.Linux.UIDMappings = idMappings(base)
	s.Linux.GIDMappings = idMappings(base)
	if path != "" {
		return
	}
	for i, m := range s.Mounts {
		if m.Destination == "/sys" {
			s.Mounts[i] = specs.Mount{
				Destination: "/sys", Type: "bind", Source: "/sys",
				Options: []string{"rbind", "nosuid", "noexec", "nodev", "rro"},
			}
		}
	}
}

// validEnvKey rejects keys that cannot be environment variable names.
func validEnvKey(k string) error {
	if k == "" || strings.ContainsAny(k, "=\x00") {
		return fmt.Errorf("invalid environment variable name %q", k)
	}
	return nil
}
