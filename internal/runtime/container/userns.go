package container

// User namespaces (issue 11, item 4): every capsule runs in its own user
// namespace whose root is an unprivileged host uid range, distinct per
// capsule:
//
//   - The driver allocates a range of idRangeSize ids at a random free slot
//     above idRangeFirst (far above the ids /etc/subuid hands out) and keeps
//     its base in state.json (record.IDBase), so recovery, freezer pauses
//     and Stop/Start keep it. A capsule restored from a snapshot gets a new
//     range: its disk stores ids relative to the capsule (see below), so a
//     remap is free and another host need not know the old one.
//   - Runc 1.1.5 (Debian 12) cannot make idmapped mounts, so the driver
//     makes them itself (rootfs.WithIDMap): the template's rootfs and the
//     capsule's image are each mounted idmapped (0..n -> base..base+n)
//     and the overlay is made over those two views. The shared template
//     stays owned by host root, and the image stores the capsule's own
//     ids (root = 0), exactly as without a user namespace.
//   - The capsule's network namespace is made inside its user namespace
//     (newOwnedNetns; both pinned, the user namespace at <dir>/userns) and
//     runc joins both: the capsule owns its network (its own sysfs; CRIU
//     dumps only namespaces the task's user namespace owns). A memory
//     restore joins the pinned namespace of the restoring capsule (a new
//     range) with `join-ns user:`, which needs the patched CRIU
//     scripts/criu.sh builds (criu.go, docs/CRIU.md).
//   - Files the driver writes into a capsule's overlay from the host
//     (/etc/hosts) are written with the capsule root's fsuid (asCapsuleRoot),
//     since host uid 0 has no mapping in the idmapped layers.
//
// A record with IDBase 0 (Config.DisableUserNS, or a capsule created
// before user namespaces) runs as before: capsule root is host root.

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"golang.org/x/sys/unix"
)

const (
	// idRangeSize ids per capsule: uids and gids 0..65535 inside.
	idRangeSize = 1 << 16
	// idRangeFirst is the lowest host id a capsule range starts at.
	idRangeFirst = 1 << 28
	// idSlots is how many ranges fit between idRangeFirst and 2^32-1.
	idSlots = (1<<32 - idRangeFirst) / idRangeSize
)

// allocIDBase reserves a free id range and returns its base.
func (d *Driver) allocIDBase() (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.idsUsed == nil {
		d.idsUsed = map[uint32]bool{}
	}
	var b [4]byte
	for range 64 {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("container: %w", err)
		}
		slot := binary.LittleEndian.Uint32(b[:]) % (idSlots - 1)
		base := uint32(idRangeFirst + slot*idRangeSize)
		if !d.idsUsed[base] {
			d.idsUsed[base] = true
			return base, nil
		}
	}
	return 0, errors.New("container: no free user namespace id range")
}

// holdIDBase marks base as used (recovered capsules).
func (d *Driver) holdIDBase(base uint32) {
	if base == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.idsUsed == nil {
		d.idsUsed = map[uint32]bool{}
	}
	d.idsUsed[base] = true
}

// freeIDBase returns a range.
func (d *Driver) freeIDBase(base uint32) {
	if base == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.idsUsed, base)
}

// idMappings is the capsule's uid (and gid) mapping.
func idMappings(base uint32) []specs.LinuxIDMapping {
	return []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: idRangeSize}}
}

// openUserns returns an fd of a new user namespace with the capsule's
// mapping, for mount_setattr(MOUNT_ATTR_IDMAP). The namespace is made by a
// short-lived child (it stays alive through the fd).
func openUserns(base uint32) (int, error) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		return -1, fmt.Errorf("container: user namespace helper: %w", err)
	}
	// The child (cat) blocks on an empty pipe until it is killed; by the
	// time Start returns, Go has written its uid and gid maps.
	r, w, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("container: %w", err)
	}
	defer r.Close()
	defer w.Close()
	// Pdeathsig fires when the forking *thread* ends; asCapsuleRoot ends
	// the threads it taints, so the child is kept on this locked thread.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	cmd := exec.Command(cat)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}},
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("container: new user namespace: %w", err)
	}
	fd, oerr := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if oerr != nil {
		return -1, fmt.Errorf("container: open user namespace: %w", oerr)
	}
	return fd, nil
}

// asCapsuleRoot runs f on a thread whose filesystem uid and gid are the
// capsule root's host ids (base), so files it creates in the capsule's
// overlay belong to capsule root. Base 0 runs f as is. f gets no
// capability over files (path lookups through the 0700 capsule directory
// fail): it must work relative to an fd opened before (os.Root). The thread is not
// reused afterwards (it stays locked and Go discards it).
func asCapsuleRoot(base uint32, f func() error) error {
	if base == 0 {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		// Never unlocked: the thread's credentials differ from the others'.
		_, _ = unix.SetfsgidRetGid(int(base))
		_, _ = unix.SetfsuidRetUid(int(base))
		if uid, _ := unix.SetfsuidRetUid(-1); uid != int(base) {
			errc <- fmt.Errorf("container: setfsuid %d failed", base)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// makeTraversable adds search (x) permission for others to dir and each of
// its ancestors that lacks it, so runc's init, which runs as the capsule's
// unprivileged host uid, can reach the capsule's rootfs and the envd
// binary. Nothing becomes listable or readable that was not.
func makeTraversable(dir string, log *slog.Logger) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	for {
		st, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("container: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(dir, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("container: make %s traversable for user namespaces: %w", dir, err)
			}
			log.Info("made a directory traversable for capsule user namespaces", "dir", dir, "mode", fmt.Sprintf("%o", st.Mode().Perm()|0o001))
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// usernsFile is where a capsule's user namespace is pinned (an nsfs bind
// mount in the capsule directory), for runc to join on start and restore.
const usernsFile = "userns"

// newOwnedNetns makes the capsule's user namespace (mapping 0..65535 to
// base..) and, inside it, its network namespace, and pins them with bind
// mounts at usernsPath and netnsPath. The network namespace is then owned
// by the capsule's user namespace: CRIU can checkpoint the capsule (it
// refuses a namespace owned by another user namespace than the task's),
// and capsule root may mount a sysfs of its own network. The host still
// configures it (host root is privileged over every child namespace).
func newOwnedNetns(base uint32, usernsPath, netnsPath string) (err error) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		return fmt.Errorf("container: user namespace helper: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer r.Close()
	defer w.Close()
	// Pdeathsig fires when the forking *thread* ends, and asCapsuleRoot
	// ends the threads it taints: without this lock the child was killed
	// between the two pins when its thread was reused and discarded (a CI
	// run: "pin net namespace: no such file or directory").
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	cmd := exec.Command(cat)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}},
		// Capsule processes call setgroups (envd, su, sshd): Go would
		// otherwise write "deny" to the namespace's setgroups file.
		GidMappingsEnableSetgroups: true,
		Pdeathsig:                  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("container: new user and network namespace: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var pinned []string
	defer func() {
		if err != nil {
			for _, p := range pinned {
				_ = unix.Unmount(p, unix.MNT_DETACH)
				_ = os.Remove(p)
			}
		}
	}()
	for _, m := range []struct{ ns, path string }{{"user", usernsPath}, {"net", netnsPath}} {
		f, err := os.OpenFile(m.path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
		if err != nil {
			return fmt.Errorf("container: pin %s namespace: %w", m.ns, err)
		}
		_ = f.Close()
		pinned = append(pinned, m.path)
		src := fmt.Sprintf("/proc/%d/ns/%s", cmd.Process.Pid, m.ns)
		if err := unix.Mount(src, m.path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("container: pin %s namespace at %s: %w", m.ns, m.path, err)
		}
	}
	return nil
}

// unpinUserns removes the user namespace pin of a capsule directory (if
// any), so the directory can be deleted.
func unpinUserns(dir string) error {
	p := filepath.Join(dir, usernsFile)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("container: unpin user namespace: %w", err)
	}
	return nil
}

// usernsPathOf returns the user namespace pin of a capsule directory, ""
// if there is none (a capsule whose network namespace is not its own:
// without user namespaces, or made before they owned it).
func usernsPathOf(dir string) string {
	p := filepath.Join(dir, usernsFile)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// removeDir unpins the capsule's user namespace, then unmounts and deletes
// the capsule directory (rootfs.Remove).
func removeDir(p rootfs.Paths) error {
	if err := unpinUserns(p.Dir); err != nil {
		return err
	}
	return rootfs.Remove(p)
}

// emptyDirKeepingRecord is removeDir that keeps the directory and its
// state.json: everything else (mounts, the user namespace pin, the image,
// the layers) goes.
func emptyDirKeepingRecord(p rootfs.Paths) error {
	if err := unpinUserns(p.Dir); err != nil {
		return err
	}
	if err := rootfs.Unmount(p); err != nil {
		return err
	}
	entries, err := os.ReadDir(p.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("container: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == "state.json" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(p.Dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("container: %w", err))
		}
	}
	return errors.Join(errs...)
}

// makeRestoreMountpoints creates, as capsule root, the mount points
// `runc restore` would create in the capsule's rootfs (runc 1.1.5,
// prepareCriuRestoreMounts): every mount's destination outside a tmpfs,
// a file for a bind mount of a file, a directory otherwise. runc makes
// them as host root, which the idmapped layers refuse (EOVERFLOW, e.g.
// /proc/cpuinfo for LXCFS: on a boot procfs is mounted there first). The
// ones that exist are left alone.
func makeRestoreMountpoints(base uint32, rootPath string, mounts []specs.Mount) error {
	if base == 0 {
		return nil
	}
	var tmpfs []string
	for _, m := range mounts {
		if m.Type == "tmpfs" {
			tmpfs = append(tmpfs, filepath.Clean(m.Destination))
		}
	}
	under := func(dest string) bool {
		for _, t := range tmpfs {
			if dest == t || strings.HasPrefix(dest, t+"/") {
				return true
			}
		}
		return false
	}
	root, err := os.OpenRoot(rootPath)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer root.Close()
	err = asCapsuleRoot(base, func() error {
		w := &unlockedDirs{root: root}
		defer w.restore()
		for _, m := range mounts {
			dest := filepath.Clean(m.Destination)
			if under(dest) {
				continue
			}
			rel := strings.TrimPrefix(dest, "/")
			if rel == "" {
				continue
			}
			file := false
			if m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind") {
				st, err := os.Stat(m.Source)
				if err != nil {
					return err
				}
				file = !st.IsDir()
			}
			if _, err := root.Lstat(rel); err == nil {
				continue
			}
			if !file {
				if err := w.retry(rel, func() error { return root.MkdirAll(rel, 0o755) }); err != nil {
					return err
				}
				continue
			}
			if err := w.retry(filepath.Dir(rel), func() error { return root.MkdirAll(filepath.Dir(rel), 0o755) }); err != nil {
				return err
			}
			err := w.retry(rel, func() error {
				f, err := root.OpenFile(rel, os.O_CREATE|os.O_WRONLY, 0o644)
				if err != nil {
					return err
				}
				return f.Close()
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("container: restore mount points: %w", err)
	}
	return nil
}

// unlockedDirs lets capsule root make mount points under directories of
// its own that lack the owner's write or search permission (it has no
// CAP_DAC_OVERRIDE over the idmapped layers): templates exported before
// ExportTemplate archived the overlay itself hold /proc and /sys with the
// modes of procfs and sysfs (0555). Such a directory gets u+wx for the
// creation and its mode back afterwards (restore).
type unlockedDirs struct {
	root  *os.Root
	modes []struct {
		path string
		mode os.FileMode
	}
}

// retry runs create; on a permission error it unlocks the existing
// directories on the way to rel (those capsule root owns) and runs it once more.
func (u *unlockedDirs) retry(rel string, create func() error) error {
	err := create()
	if err == nil || !errors.Is(err, os.ErrPermission) {
		return err
	}
	changed := false
	parts := strings.Split(filepath.Dir(rel), "/")
	for i := range parts {
		dir := filepath.Join(parts[:i+1]...)
		if dir == "." {
			break
		}
		fi, serr := u.root.Lstat(dir)
		if serr != nil {
			break // not there yet: create makes it
		}
		mode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
		if !fi.IsDir() || mode&0o300 == 0o300 {
			continue
		}
		if cerr := u.root.Chmod(dir, mode|0o300); cerr != nil {
			return errors.Join(err, cerr)
		}
		u.modes = append(u.modes, struct {
			path string
			mode os.FileMode
		}{dir, mode})
		changed = true
	}
	if !changed {
		return err
	}
	return create()
}

// restore gives the unlocked directories their modes back, deepest first.
func (u *unlockedDirs) restore() {
	for i := len(u.modes) - 1; i >= 0; i-- {
		_ = u.root.Chmod(u.modes[i].path, u.modes[i].mode)
	}
}

// makeRestoreMountpoints prepares rec's rootfs for `runc restore` (see the
// function above) from its bundle.
func (d *Driver) makeRestoreMountpoints(rec *record) error {
	if rec.IDBase == 0 {
		return nil
	}
	p := d.paths(rec.Key)
	b, err := os.ReadFile(filepath.Join(p.Dir, "config.json"))
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("container: bundle: %w", err)
	}
	return makeRestoreMountpoints(rec.IDBase, p.Root(), s.Mounts)
}

// chownTree gives dir and everything in it to the capsule root's host ids
// (base; nothing for 0). The restored tasks, cloned inside the capsule's
// user namespace, open CRIU's images themselves (tty-info.img, files...),
// as capsule root; the directory is the capsule's private copy of the
// image, deleted after the restore, outside its rootfs.
func chownTree(dir string, base uint32) error {
	if base == 0 {
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(base), int(base))
	})
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return nil
}
