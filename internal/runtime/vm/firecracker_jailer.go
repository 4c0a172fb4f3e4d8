package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// JailerConfig runs every Firecracker VM under Firecracker's jailer
// (docs/jailer.md): its own uid and gid, a chroot at
// <ChrootBase>/<firecracker binary name>/<id>/root holding only the files
// the VM needs (hard links when on the same file system, else read-only or
// read-write bind mounts), a cgroup <ParentCgroup>/<id> (cgroup v2) and
// the capsule's network namespace. Destroying the VM unmounts and removes
// all of it and the cgroup.
type JailerConfig struct {
	// Path is the jailer binary.
	Path string
	// ChrootBase is --chroot-base-dir (default /srv/jailer).
	ChrootBase string
	// UIDBase and GIDBase start the range of per-VM ids: VM slot n runs
	// as UIDBase+n:GIDBase+n (default 1500000000 both); Slots bounds it
	// (default 65536).
	UIDBase, GIDBase, Slots int
	// ParentCgroup is --parent-cgroup (default: the jailer's, the binary's
	// name).
	ParentCgroup string
	// CgroupRoot is the cgroup v2 mount (default: found in
	// /proc/self/mountinfo); used to remove the VM's cgroup on destroy.
	CgroupRoot string

	mu    sync.Mutex
	slots map[string]int
}

var jailIDRe = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

func (j *JailerConfig) check(bin string) error {
	if j.ChrootBase == "" {
		j.ChrootBase = "/srv/jailer"
	}
	if j.UIDBase == 0 {
		j.UIDBase = 1_500_000_000
	}
	if j.GIDBase == 0 {
		j.GIDBase = 1_500_000_000
	}
	if j.Slots == 0 {
		j.Slots = 65536
	}
	if j.CgroupRoot == "" {
		j.CgroupRoot = cgroup2Mount()
	}
	if !filepath.IsAbs(j.ChrootBase) {
		return fmt.Errorf("firecracker jailer: chroot base %q is not absolute", j.ChrootBase)
	}
	if !strings.Contains(filepath.Base(bin), "firecracker") {
		return fmt.Errorf("firecracker jailer: the jailer only runs a binary whose name contains \"firecracker\" (%s)", filepath.Base(bin))
	}
	st, err := os.Stat(j.Path)
	if err != nil {
		return fmt.Errorf("firecracker jailer: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("firecracker jailer: %s is not an executable file", j.Path)
	}
	return os.MkdirAll(j.ChrootBase, 0o711)
}

// cgroup2Mount is where the unified cgroup hierarchy is mounted ("" if
// nowhere).
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		_, after, ok := strings.Cut(l, " - ")
		if !ok || !strings.HasPrefix(after, "cgroup2 ") {
			continue
		}
		if fs := strings.Fields(l); len(fs) > 4 {
			return fs[4]
		}
	}
	return ""
}

// jailDir is <ChrootBase>/<binary name>/<id>; root its root/.
func (j *JailerConfig) jailDir(bin, id string) string {
	return filepath.Join(j.ChrootBase, filepath.Base(bin), id)
}

func (j *JailerConfig) root(bin, id string) string { return filepath.Join(j.jailDir(bin, id), "root") }

// slot gives id a uid/gid slot (the same one while it holds it).
func (j *JailerConfig) slot(id string) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.slots == nil {
		j.slots = map[string]int{}
	}
	if s, ok := j.slots[id]; ok {
		return s, nil
	}
	used := make(map[int]bool, len(j.slots))
	for _, s := range j.slots {
		used[s] = true
	}
	for s := 0; s < j.Slots; s++ {
		if !used[s] {
			j.slots[id] = s
			return s, nil
		}
	}
	return 0, errors.New("firecracker jailer: no free uid (every slot in use)")
}

func (j *JailerConfig) release(id string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.slots, id)
}

// args is the jailer's command line for one VM.
func (j *JailerConfig) args(bin, id string, uid int, spec MachineSpec, fcArgs []string) []string {
	gid := uid - j.UIDBase + j.GIDBase
	a := []string{
		"--id", id,
		"--exec-file", bin,
		"--uid", strconv.Itoa(uid),
		"--gid", strconv.Itoa(gid),
		"--chroot-base-dir", j.ChrootBase,
		"--cgroup-version", "2",
	}
	if j.ParentCgroup != "" {
		a = append(a, "--parent-cgroup", j.ParentCgroup)
	}
	// Guest RAM plus room for a full snapshot written into tmpfs (charged
	// to the writer's cgroup) and Firecracker itself.
	memMax := (2*int64(spec.MemoryMB) + 128) << 20
	a = append(a,
		"--cgroup", "memory.max="+strconv.FormatInt(memMax, 10),
		"--cgroup", fmt.Sprintf("cpu.max=%d 100000", 100000*max(spec.VCPUs, 1)),
		"--resource-limit", "no-file=4096",
	)
	if spec.Netns != "" {
		a = append(a, "--netns", spec.Netns)
	}
	return append(append(a, "--"), fcArgs...)
}

// cgroupDir is the VM's cgroup the jailer creates.
func (j *JailerConfig) cgroupDir(bin, id string) string {
	if j.CgroupRoot == "" {
		return ""
	}
	parent := j.ParentCgroup
	if parent == "" {
		parent = filepath.Base(bin)
	}
	return filepath.Join(j.CgroupRoot, parent, id)
}

// prepare makes the VM's directory with its files under their fixed names.
func (f *Firecracker) prepare(m *fcMachine) error {
	if f.Jailer != nil {
		s, err := f.Jailer.slot(m.id)
		if err != nil {
			return err
		}
		m.uid, m.gid = f.Jailer.UIDBase+s, f.Jailer.GIDBase+s
		if err := os.MkdirAll(f.Jailer.jailDir(f.Bin, m.id), 0o700); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return err
	}
	type entry struct {
		name, src string
		ro        bool
	}
	es := []entry{
		{fcKernelN, fcKernel(m.spec.Kernel), true},
		{fcInitrdN, m.spec.Initrd, true},
	}
	for i, d := range m.spec.Disks {
		es = append(es, entry{driveName(i), d.Path, d.ReadOnly})
	}
	if m.spec.MemPath != "" {
		if !fileExists(m.spec.MemPath) {
			mf, err := os.OpenFile(m.spec.MemPath, os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				return err
			}
			err = errors.Join(mf.Truncate(int64(m.spec.MemoryMB)<<20), mf.Close())
			if err != nil {
				return err
			}
		}
		es = append(es, entry{fcMemN, m.spec.MemPath, false})
		if m.spec.Incoming != nil {
			// Where the restored VM's next snapshot goes (see SaveState):
			// placed now, before the jail's mount namespace is made.
			name, side := m.sidePath()
			if err := os.WriteFile(side, nil, 0o600); err != nil {
				return err
			}
			es = append(es, entry{name, side, false})
		}
	}
	for _, e := range es {
		if e.src == "" {
			continue
		}
		if err := m.place(e.src, e.name, e.ro); err != nil {
			return fmt.Errorf("firecracker: %s in the VM directory: %w", e.name, err)
		}
	}
	return nil
}

// place makes src visible as name in the VM's directory: a symlink without
// the jailer; in a jail a hard link (same file system) or a bind mount,
// read-only ones readable by the jailed uid, read-write ones owned by it.
func (m *fcMachine) place(src, name string, ro bool) error {
	dst := filepath.Join(m.dir, name)
	_ = m.unplace(name)
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if m.f.Jailer == nil {
		return os.Symlink(abs, dst)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return err
	}
	if ro {
		if st.Mode().Perm()&0o004 == 0 {
			if err := os.Chmod(abs, st.Mode().Perm()|0o004); err != nil {
				return err
			}
		}
	} else if err := os.Chown(abs, m.uid, m.gid); err != nil {
		return err
	}
	if err := os.Link(abs, dst); err == nil {
		return nil
	} else if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(abs, dst, "", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("bind mount %s: %w", abs, err)
	}
	if ro {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(dst, unix.MNT_DETACH)
			_ = os.Remove(dst)
			return fmt.Errorf("read-only bind mount %s: %w", abs, err)
		}
	}
	return nil
}

// unplace removes name from the VM's directory (unmounting a bind mount).
func (m *fcMachine) unplace(name string) error {
	dst := filepath.Join(m.dir, name)
	for _, mp := range mountsUnder(dst) {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// mountsUnder lists mount points at or below p, deepest first.
func mountsUnder(p string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		mp := unescapeMount(fs[4])
		if mp == p || strings.HasPrefix(mp, p+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func unescapeMount(s string) string {
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

// cleanup removes everything a VM's directory held: bind mounts, links,
// sockets, the jail and its cgroup, and frees its uid slot. The files
// placed there (disks, RAM) stay where the driver keeps them.
func (f *Firecracker) cleanup(dir, id string) error {
	var errs []error
	top := dir
	if f.Jailer != nil {
		top = f.Jailer.jailDir(f.Bin, id)
	}
	for _, mp := range mountsUnder(top) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(top); err != nil {
			errs = append(errs, err)
		}
	}
	if f.Jailer != nil {
		if cg := f.Jailer.cgroupDir(f.Bin, id); cg != "" {
			if err := unix.Rmdir(cg); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", cg, err))
			}
		}
		f.Jailer.release(id)
	}
	return errors.Join(errs...)
}
