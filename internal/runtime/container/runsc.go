package container

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// The gVisor runtime class (issue 18). With Config.Runtime = RuntimeRunsc
// the driver is the same: the same OCI bundle, rootfs (overlay on a loop
// ext4 image: the disk quota), network namespace and veth with the same
// nftables isolation and egress policy, cgroup limits, freezer-based warm
// pause, warm pool, snapshot engine and crash recovery. What differs is
// the OCI runtime and its flags, and what replaces the runc-only pieces:
//
//   - user namespace: off. The capsule's processes never run on the host
//     kernel: the sentry (gVisor's user-space kernel) serves their system
//     calls, itself confined by its own seccomp filter, namespaces and a
//     chroot; the gofer serves the root file system. A per-capsule id
//     range would protect nothing the sentry does not already.
//   - seccomp: the capsule's allow-list is applied by the sentry to the
//     capsule's processes (--oci-seccomp), so what a runc capsule is refused
//     (mount, unshare of namespaces, bpf, keyctl…) is refused here too,
//     in gVisor's kernel, on top of gVisor's own host filter.
//   - LXCFS: off; gVisor's /proc is its own and shows the capsule's memory
//     limit (meminfo follows the cgroup limit) and its CPU quota
//     (--cpu-num-from-quota).
//   - networking: --network=sandbox in the capsule's netns: gVisor's
//     netstack takes over eth0 (its address and routes), so traffic leaves
//     by the same veth through the same host rules.
//   - the root file system: --overlay2=none, so writes reach the capsule's
//     ext4 image (quota, pause to disk) instead of a sentry memory overlay.
//   - memory snapshots: `runsc checkpoint` / `runsc restore` (no CRIU);
//     the image directory goes through the snapshot engine as a tar, like
//     CRIU images, with the sha256 of the runsc binary recorded: an image
//     from another runsc is not restored (the capsule boots with its
//     files).
//   - warm pool: the hostname is set through envd (setns into the UTS
//     namespace reaches only the sentry's host namespace).

// Runtime classes (Config.Runtime).
const (
	// RuntimeRunc is runc (Debian's package): the default.
	RuntimeRunc = "runc"
	// RuntimeRunsc is gVisor's runsc (scripts/runsc.sh builds it).
	RuntimeRunsc = "runsc"
)

// metaRunscBinary names, on a gVisor memory image, the sha256 of the runsc
// binary that wrote it.
const (
	metaRunscBinary = "wrenn.runsc_sha256"
	kindRunsc       = "capsule-runsc-images-tar"
)

// runtimeClass is the OCI runtime the driver runs capsules with.
type runtimeClass struct {
	runsc    bool
	path     string   // absolute path of runc or runsc
	global   []string // flags before the subcommand, after --root
	platform string   // runsc: systrap or kvm
	sha      string   // runsc: sha256 of the binary
}

// setupRunsc resolves and checks the runsc binary and forces the settings
// gVisor replaces (see the top of this file).
func (d *Driver) setupRunsc(ctx context.Context) error {
	path := d.cfg.RunscPath
	if path == "" {
		path = "runsc"
	}
	bin, err := exec.LookPath(path)
	if err != nil {
		return fmt.Errorf("container: runsc not found (scripts/runsc.sh builds it): %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return err
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(vctx, bin, "--version").CombinedOutput(); err != nil {
		return fmt.Errorf("container: %s --version: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	sha, err := fileSHA256(bin)
	if err != nil {
		return fmt.Errorf("container: runsc: %w", err)
	}
	platform := d.cfg.RunscPlatform
	if platform == "" {
		platform = "systrap"
		if kvmUsable() {
			// /dev/kvm may open and still not work for gVisor (a nested
			// VM without enough memory slots): a sandbox must run.
			if err := probePlatform(ctx, bin, "kvm"); err != nil {
				d.log.Info("gVisor: /dev/kvm is there but the kvm platform does not work; using systrap", "err", err)
			} else {
				platform = "kvm"
			}
		}
	}
	d.rt = runtimeClass{
		runsc:    true,
		path:     bin,
		platform: platform,
		sha:      sha,
		global: append([]string{
			"--platform=" + platform,
			"--network=sandbox",
			"--overlay2=none",
			"--oci-seccomp",
			"--cpu-num-from-quota",
			"--allow-live-tcp-migration=false",
			"--restore-spec-validation=warning",
		}, d.cfg.RunscFlags...),
	}
	d.cfg.DisableUserNS = true
	d.cfg.DisableLXCFS = true
	d.cfg.DisableCRIU = true // memory snapshots are runsc's own
	d.criu, d.criuOff = true, ""
	return nil
}

// checkStatic refuses a dynamically linked runsc: it re-executes itself
// from /proc/self/exe inside an empty mount namespace and fails there.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("container: runsc %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("container: runsc %s is dynamically linked; build it with CGO_ENABLED=0 (scripts/runsc.sh)", bin)
		}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// probePlatform runs /bin/true in a throwaway sandbox on platform.
func probePlatform(ctx context.Context, bin, platform string) error {
	dir, err := os.MkdirTemp("", "wrenn-runsc-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--root", dir, "--platform="+platform, "--network=none", "do", "/bin/true")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, lastLine(out))
	}
	return nil
}

// kvmUsable reports whether /dev/kvm can be opened for reading and writing.
func kvmUsable() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	_ = unix.Close(fd)
	return true
}

// Runtime is the driver's runtime class (RuntimeRunc or RuntimeRunsc).
func (d *Driver) Runtime() string {
	if d.rt.runsc {
		return RuntimeRunsc
	}
	return RuntimeRunc
}

// RunscPlatform is gVisor's platform (systrap or kvm; "" under runc).
func (d *Driver) RunscPlatform() string { return d.rt.platform }

// rtArgs is the argument list of one runtime command.
func (d *Driver) rtArgs(args ...string) []string {
	full := make([]string, 0, 2+len(d.rt.global)+len(args))
	full = append(full, "--root", d.runcRoot)
	full = append(full, d.rt.global...)
	return append(full, args...)
}

// rtCommand is exec.CommandContext of the runtime with its global flags.
func (d *Driver) rtCommand(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, d.rt.path, d.rtArgs(args...)...)
}

// containerKeys lists the keys of the runtime's containers in its root:
// runc keeps a directory per container; runsc keeps state files, so it is
// asked (`runsc list -q`).
func (d *Driver) containerKeys(ctx context.Context) []string {
	if !d.rt.runsc {
		var keys []string
		entries, _ := os.ReadDir(d.runcRoot)
		for _, e := range entries {
			if e.IsDir() {
				keys = append(keys, e.Name())
			}
		}
		return keys
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := d.rtCommand(ctx, "list", "-quiet").Output()
	if err != nil {
		d.log.Warn("runsc list", "err", err)
		return nil
	}
	return strings.Fields(string(out))
}

// setHostnameVia sets a warm capsule's hostname to name. Under runc that
// is a setns into its UTS namespace; under gVisor the UTS namespace lives
// in the sentry, so envd runs `hostname`.
func (d *Driver) setHostnameVia(ctx context.Context, rec *record, name string) error {
	if !d.rt.runsc {
		return setHostname(rec.PID, name)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Capsule processes have no CAP_SYS_ADMIN: a one-off process with it
	// (and only it) sets the name in the sandbox's UTS namespace.
	proc := specs.Process{
		User: specs.User{UID: 0, GID: 0},
		Args: []string{"/bin/hostname", name},
		Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cwd:  "/",
		Capabilities: &specs.LinuxCapabilities{
			Bounding: []string{"CAP_SYS_ADMIN"}, Effective: []string{"CAP_SYS_ADMIN"}, Permitted: []string{"CAP_SYS_ADMIN"},
		},
		NoNewPrivileges: true,
	}
	b, err := json.Marshal(proc)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	path := filepath.Join(d.paths(rec.Key).Dir, "hostname.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer os.Remove(path)
	if out, err := d.rtCommand(ctx, "exec", "--process", path, rec.Key).CombinedOutput(); err != nil {
		return fmt.Errorf("container: set hostname: runsc exec: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// adjustSpec adapts a capsule's OCI spec to its runtime. Under gVisor the
// seccomp allow-list (applied by the sentry, --oci-seccomp) also allows
// sethostname and setdomainname, which change only the sandbox's own UTS
// namespace and still need CAP_SYS_ADMIN, which capsule processes lack:
// the driver's one-off process that renames a warm-pool capsule has it.
//
// The capsule's pids limit: the host cgroup's pids.max counts the
// sentry's and the gofer's host threads, not the capsule's tasks (the
// sentry multiplexes them), so a fork bomb inside would grow until the
// sentry itself could not make a host thread. RLIMIT_NPROC, which
// gVisor's kernel enforces per user on every task (thread) it starts,
// for root too unless it holds CAP_SYS_ADMIN or CAP_SYS_RESOURCE (capsule
// processes hold neither), bounds them inside the sandbox instead. The
// host cgroup keeps a limit with room for what the sandbox needs on the
// host for that many tasks (runscHostPids): at the capsule's limit the
// capsule's fork fails with EAGAIN, not the sentry's.
func (d *Driver) adjustSpec(s *specs.Spec) {
	if !d.rt.runsc {
		return
	}
	n := max(d.cfg.PidsLimit, 1)
	if s.Process != nil {
		s.Process.Rlimits = append(slices.DeleteFunc(s.Process.Rlimits, func(r specs.POSIXRlimit) bool {
			return r.Type == "RLIMIT_NPROC"
		}), specs.POSIXRlimit{Type: "RLIMIT_NPROC", Hard: uint64(n), Soft: uint64(n)}) //nolint:gosec // positive
	}
	if s.Linux != nil && s.Linux.Resources != nil {
		s.Linux.Resources.Pids = &specs.LinuxPids{Limit: runscHostPids(n)}
	}
	if s.Linux == nil || s.Linux.Seccomp == nil {
		return
	}
	// runsc turns every ActErrno into EPERM, whatever its errno: clone3
	// would answer EPERM instead of ENOSYS, and glibc (posix_spawn: make,
	// Python's subprocess) only falls back to clone, whose flags the
	// filter checks, on ENOSYS ("make: gcc: Operation not permitted").
	// ActTrace is answered ENOSYS by gVisor's kernel when no tracer asked
	// for seccomp events, as Linux does.
	for i, r := range s.Linux.Seccomp.Syscalls {
		if r.Action == specs.ActErrno && r.ErrnoRet != nil && *r.ErrnoRet == uint(unix.ENOSYS) {
			s.Linux.Seccomp.Syscalls[i].Action, s.Linux.Seccomp.Syscalls[i].ErrnoRet = specs.ActTrace, nil
		}
	}
	s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{
		Names: []string{"sethostname", "setdomainname"}, Action: specs.ActAllow,
	})
}

// runscCheckpoint saves a running capsule's sandbox with `runsc
// checkpoint` into <capsule>/criu-images (the sandbox exits). On failure
// the capsule keeps running and the directory is removed.
func (d *Driver) runscCheckpoint(ctx context.Context, rec *record) (string, error) {
	if rec.State == runtime.StatePaused {
		if err := d.cg.freeze(d.cgroupPath(rec.Key), false); err != nil {
			return "", err
		}
		rec.State = runtime.StateRunning
	}
	images := filepath.Join(d.paths(rec.Key).Dir, criuImagesDir)
	if err := os.RemoveAll(images); err != nil {
		return "", fmt.Errorf("container: %w", err)
	}
	if err := os.MkdirAll(images, 0o700); err != nil {
		return "", fmt.Errorf("container: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, d.cfg.CRIUTimeout)
	defer cancel()
	cmd := d.rtCommand(cctx, "checkpoint", "--image-path", images, "--exclude-committed-zero-pages", rec.Key)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(images)
		return "", fmt.Errorf("runsc checkpoint: %w: %s", err, strings.TrimSpace(string(out)))
	}
	// The sandbox is gone; runsc keeps its container record until delete.
	_ = d.runcDelete(context.WithoutCancel(ctx), rec.Key)
	rec.State = runtime.StateStopped
	rec.PID = 0
	return images, nil
}

// runscRestore restores a built (not started) capsule from the images
// with `runsc restore`. On failure nothing of the attempt is left running.
func (d *Driver) runscRestore(ctx context.Context, rec *record, images string) error {
	p := d.paths(rec.Key)
	defer os.RemoveAll(images)
	logf, err := os.OpenFile(filepath.Join(p.Dir, "envd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer logf.Close()
	if err := d.beforeStart(rec); err != nil {
		return err
	}
	if beforeRunscRestore != nil {
		beforeRunscRestore(images)
	}
	pidFile := filepath.Join(p.Dir, "pid")
	_ = os.Remove(pidFile)
	rctx, cancel := context.WithTimeout(ctx, min(d.cfg.CRIUTimeout, runscRestoreBudget(imagesSize(images))))
	defer cancel()
	cmd := d.rtCommand(rctx, "restore", "--detach", "--image-path", images, "--bundle", p.Dir, "--pid-file", pidFile, rec.Key)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killTree(cmd.Process.Pid) }
	cmd.WaitDelay = 5 * time.Second
	err = runBounded(rctx, cmd, 10*time.Second)
	if err == nil {
		var b []byte
		if b, err = os.ReadFile(pidFile); err == nil {
			rec.PID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	if err != nil {
		err = fmt.Errorf("runsc restore: %w: %s", err, tail(filepath.Join(p.Dir, "envd.log")))
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := d.runcDelete(cctx, rec.Key); derr != nil {
			d.log.Warn("runsc delete after a failed memory restore", "id", rec.ID, "err", derr)
		}
		if kerr := d.cg.remove(d.cgroupPath(rec.Key)); kerr != nil {
			d.log.Warn("empty cgroup after a failed memory restore", "id", rec.ID, "err", kerr)
		}
		// A restore killed at its time limit can leave its sandbox
		// outside the cgroup (not yet moved in, or runsc delete could not
		// reach it). Its netstack would still answer on the capsule's
		// veth next to the sandbox the fallback boots: both take the
		// capsule's address, so some connections reach the dead-end one
		// (seen once: /health answered, exec got 502). Nothing of the
		// attempt may stay in the capsule's network namespace.
		if n, kerr := d.killRunscLeftovers(cctx, rec.Key, rec.Net.Netns); kerr != nil || n > 0 {
			d.log.Warn("processes of a failed memory restore left in the capsule's network namespace", "id", rec.ID, "killed", n, "err", kerr)
		}
		rec.PID = 0
		return err
	}
	rec.State = runtime.StateRunning
	rec.StartedAt = time.Now().UTC()
	return nil
}

// checkRunscImage refuses a memory image written by another runsc build.
func (d *Driver) checkRunscImage(md map[string]string) error {
	if md[metaKind] != kindRunsc {
		return fmt.Errorf("not a gVisor memory image (kind %q)", md[metaKind])
	}
	if got := md[metaRunscBinary]; got != d.rt.sha {
		return errors.New("memory image written by another runsc build (sha256 " + short(got) + ", this host's " + short(d.rt.sha) + ")")
	}
	return nil
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// releaseRunscRoot removes the network namespace runsc binds at
// <root>/null-netns (for its gofers) once the driver is closed and no
// sandbox is left; the next start makes it again.
func (d *Driver) releaseRunscRoot() {
	if !d.rt.runsc || !d.closed.Load() {
		return
	}
	d.mu.Lock()
	n := len(d.caps)
	d.mu.Unlock()
	if n > 0 {
		return
	}
	p := filepath.Join(d.runcRoot, "null-netns")
	if err := unmountAll(p); err != nil {
		d.log.Warn("unmount runsc null-netns", "err", err)
		return
	}
	_ = os.Remove(p)
}

// unmountAll unmounts every mount stacked on path (runsc binds its
// null-netns again when concurrent starts each find it missing), lazily;
// nothing mounted is fine.
func unmountAll(path string) error {
	for range 64 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("container: %s: still mounted after 64 unmounts", path)
}

// beforeStart prepares a capsule's host side for its runtime: under gVisor
// eth0 gets its address and route back (a sandbox that ran before took
// them into its netstack).
//
// Nothing of an earlier sandbox of the capsule may still run then: a
// sandbox that `runsc delete` did not reach (a failed restore's, outside
// the cgroup; one still exiting) keeps its netstack on the veth, and two
// netstacks with the capsule's address break its connections (the new
// envd never answered). They are killed and waited for first.
func (d *Driver) beforeStart(rec *record) error {
	if !d.rt.runsc {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := d.killRunscLeftovers(ctx, rec.Key, rec.Net.Netns); err != nil {
		return err
	} else if n > 0 {
		d.log.Warn("gVisor: processes of an earlier sandbox of the capsule killed before its start", "id", rec.ID, "count", n)
	}
	return d.net.ConfigureGuest(rec.Net)
}

// thawForDelete thaws a gVisor capsule's cgroup before `runsc delete`:
// runsc talks to the sentry to stop it, and a frozen sentry never answers.
// (runc kills a frozen container without help.) A missing cgroup is fine.
func (d *Driver) thawForDelete(key string) {
	if !d.rt.runsc {
		return
	}
	if st, err := d.cg.frozenState(d.cgroupPath(key)); err == nil && st != "THAWED" && st != "frozen 0" {
		_ = d.cg.freeze(d.cgroupPath(key), false)
	}
}

// RuntimePath is the runtime binary (runc or runsc); RuntimeArgs prefixes
// args with the driver's --root and global flags (tools, tests).
func (d *Driver) RuntimePath() string { return d.rt.path }

// RuntimeArgs: see RuntimePath.
func (d *Driver) RuntimeArgs(args ...string) []string { return d.rtArgs(args...) }

// runscHostPids is the host cgroup's pids limit of a gVisor sandbox whose
// capsule may run n tasks per user: the sentry's and the gofer's own
// threads, and under systrap one stub process per address space plus a
// stub thread per task, for the two users capsule commands run as.
func runscHostPids(n int64) int64 { return 4*n + 256 }

// runscRestoreBudget bounds one `runsc restore` of an image of size bytes
// (restoreBudget; a variable for tests).
var runscRestoreBudget = restoreBudget

// beforeRunscRestore, when set (tests), sees the image directory just
// before `runsc restore` reads it.
var beforeRunscRestore func(images string)

// killRunscLeftovers SIGKILLs what is left of one capsule's sandbox —
// the runsc processes (sandbox, gofer, a restore) of this driver's runsc
// root whose container is key, and any process of the runsc binary in the
// capsule's network namespace at netnsPath — waits until they are gone
// and reports how many there were. A sandbox whose restore failed is not
// in the capsule's cgroup, so emptying the cgroup does not reach it.
func (d *Driver) killRunscLeftovers(ctx context.Context, key, netnsPath string) (int, error) {
	if d.rt.path == "" {
		return 0, nil
	}
	wantNS := ""
	var st unix.Stat_t
	if netnsPath != "" && unix.Stat(netnsPath, &st) == nil {
		wantNS = fmt.Sprintf("net:[%d]", st.Ino)
	}
	root := "--root=" + d.runcRoot
	find := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			dir := filepath.Join("/proc", e.Name())
			b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
			if err != nil || len(b) == 0 {
				continue // gone, or a zombie
			}
			args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
			i := slices.Index(args, "--root")
			mine := args[len(args)-1] == key && (slices.Contains(args, root) || (i >= 0 && i+1 < len(args) && args[i+1] == d.runcRoot))
			if !mine && wantNS != "" {
				ns, _ := os.Readlink(filepath.Join(dir, "ns", "net"))
				exe, _ := os.Readlink(filepath.Join(dir, "exe"))
				mine = ns == wantNS && strings.TrimSuffix(exe, " (deleted)") == d.rt.path
			}
			if mine {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	first := find()
	for pids := first; len(pids) > 0; pids = find() {
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return len(first), fmt.Errorf("container: processes %v of capsule %s still there: %w", pids, key, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return len(first), nil
}

// reapRunsc makes sure nothing of a gVisor capsule's sandbox outlives its
// release: a sandbox outside the capsule's cgroup (a failed restore's)
// would otherwise keep running, with its netstack on the capsule's veth,
// while the veth and the IFB are deleted.
func (d *Driver) reapRunsc(ctx context.Context, rec *record) error {
	if !d.rt.runsc {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	n, err := d.killRunscLeftovers(ctx, rec.Key, rec.Net.Netns)
	if n > 0 {
		d.log.Warn("gVisor sandbox processes outside the capsule's cgroup killed", "id", rec.ID, "count", n)
	}
	return err
}
