// Package rootfs builds a capsule's root filesystem: an overlayfs whose
// lower layer is the template's rootfs (read-only, shared by every capsule of
// the template) and whose upper layer lives on a per-capsule sparse ext4
// image mounted through a loop device. The image size is the capsule's disk
// quota: writes past it fail with ENOSPC inside the capsule, the host's own
// filesystem only holds the blocks actually written.
//
// Layout under a capsule directory D:
//
//	D/disk.img   sparse ext4 image
//	D/disk/      the image, mounted (upper/ and work/ inside)
//	D/rootfs/    the overlay mount, the capsule's /
//
// Invariants: loop devices are configured with LO_FLAGS_AUTOCLEAR, so
// unmounting the image releases its loop device and no loop device outlives
// its mount; Unmount is idempotent and tolerates half-made layouts.
package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths of one capsule's rootfs pieces.
type Paths struct {
	Dir string
}

// Image is the sparse ext4 image file.
func (p Paths) Image() string { return filepath.Join(p.Dir, "disk.img") }

// Disk is where the image is mounted.
func (p Paths) Disk() string { return filepath.Join(p.Dir, "disk") }

// Upper is the overlay upper directory (the capsule's changes).
func (p Paths) Upper() string { return filepath.Join(p.Dir, "disk", "upper") }

// Work is overlayfs's work directory.
func (p Paths) Work() string { return filepath.Join(p.Dir, "disk", "work") }

// Root is the overlay mount point, the capsule's root.
func (p Paths) Root() string { return filepath.Join(p.Dir, "rootfs") }

// Lower is where an idmapped view of the template's rootfs is mounted
// (WithIDMap only).
func (p Paths) Lower() string { return filepath.Join(p.Dir, "lower") }

// IDDisk is where an idmapped view of the mounted image is mounted
// (WithIDMap only); the overlay then takes upper and work from it.
func (p Paths) IDDisk() string { return filepath.Join(p.Dir, "idisk") }

// Option changes how Mount builds the overlay.
type Option func(*mountOptions)

type mountOptions struct {
	userns   int    // fd of a user namespace, -1 for none
	hostRoot uint32 // host id its root maps to
	// diskMapped: PrepareDisk already mounted the idmapped disk.
	diskMapped bool
}

// WithIDMap idmaps both overlay layers with the uid/gid mapping of the
// user namespace userns (an open /proc/<pid>/ns/user): the template's
// files (owned by 0..n on the host) and the image's files (stored as
// 0..n) appear to the capsule as the host ids the mapping gives, so a
// capsule in that user namespace sees them owned by its own root, and
// what it writes is stored on the image as 0..n again (portable across
// mappings and hosts). Both idmapped mounts are private clones under
// Dir; the overlay is made over them. hostRoot is the host id the
// namespace's root maps to: overlayfs works on its upper layer with the
// mounter's credentials, which must map into the idmapped upper, so the
// overlay is mounted with that filesystem uid and gid.
func WithIDMap(userns int, hostRoot uint32) Option {
	return func(o *mountOptions) { o.userns, o.hostRoot = userns, hostRoot }
}

// MakeImage creates a sparse ext4 image of sizeMB at path. It runs mkfs.ext4
// without a journal and with lazy inode tables so creation is fast and the
// file stays sparse.
func MakeImage(ctx context.Context, path string, sizeMB int) error {
	if sizeMB < 8 {
		return fmt.Errorf("rootfs: image size %d MB too small", sizeMB)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("rootfs: size image: %w", err)
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
		"-E", "lazy_itable_init=1,nodiscard", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rootfs: mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Mount makes the capsule's rootfs: it creates the image (unless it exists),
// mounts it through a loop device, lets fill (if not nil) write into the
// upper directory before overlayfs sees it (restoring a snapshot), and
// mounts the overlay over lower. On error, what it mounted is unmounted.
//
// blankDir, if not empty, caches one freshly made blank image per size; new
// images are sparse copies of it (a few MB of metadata instead of a mkfs run).
func Mount(ctx context.Context, p Paths, lower string, sizeMB int, blankDir string, fill func(upper string) error, opts ...Option) (err error) {
	o := mountOptions{userns: -1}
	for _, f := range opts {
		f(&o)
	}
	for _, d := range []string{p.Dir, p.Disk(), p.Root()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	if _, serr := os.Stat(p.Image()); errors.Is(serr, os.ErrNotExist) {
		if err := newImage(ctx, p.Image(), sizeMB, blankDir); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			_ = Unmount(p)
		}
	}()
	if err := mountImage(p.Image(), p.Disk()); err != nil {
		return err
	}
	if fill != nil {
		if err := os.MkdirAll(p.Upper(), 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := fill(p.Upper()); err != nil {
			return err
		}
	}
	return mountOverlay(p, lower, o)
}

// PrepareDisk makes the capsule's disk ahead of its template (a spare for
// a cold create): the directories, a blank image of sizeMB (a sparse copy
// of blankDir's, as Mount makes it) mounted on p.Disk() and, WithIDMap,
// its idmapped clone. MountOverlay (with the same options) then finishes
// the rootfs. On error, what it mounted is unmounted.
func PrepareDisk(ctx context.Context, p Paths, sizeMB int, blankDir string, opts ...Option) (err error) {
	o := mountOptions{userns: -1}
	for _, f := range opts {
		f(&o)
	}
	for _, d := range []string{p.Dir, p.Disk(), p.Root()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	if err := newImage(ctx, p.Image(), sizeMB, blankDir); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = Unmount(p)
		}
	}()
	if err := mountImage(p.Image(), p.Disk()); err != nil {
		return err
	}
	if o.userns < 0 {
		return nil
	}
	for _, d := range []string{p.Upper(), p.Work()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return idmapMount(p.Disk(), p.IDDisk(), o.userns)
}

// MountOverlay mounts the overlay over lower on a disk PrepareDisk
// mounted with the same options (the template-specific part of Mount).
func MountOverlay(p Paths, lower string, opts ...Option) error {
	o := mountOptions{userns: -1}
	for _, f := range opts {
		f(&o)
	}
	o.diskMapped = o.userns >= 0
	return mountOverlay(p, lower, o)
}

func mountOverlay(p Paths, lower string, o mountOptions) error {
	for _, d := range []string{p.Upper(), p.Work()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	upper, work := p.Upper(), p.Work()
	if o.userns >= 0 {
		if err := idmapMount(lower, p.Lower(), o.userns); err != nil {
			return err
		}
		if !o.diskMapped {
			if err := idmapMount(p.Disk(), p.IDDisk(), o.userns); err != nil {
				return err
			}
		}
		lower = p.Lower()
		upper = filepath.Join(p.IDDisk(), "upper")
		work = filepath.Join(p.IDDisk(), "work")
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	mount := func() error { return unix.Mount("overlay", p.Root(), "overlay", 0, opts) }
	if o.userns >= 0 {
		plain := mount
		mount = func() error { return withFSIDs(o.hostRoot, plain) }
	}
	if err := mount(); err != nil {
		return fmt.Errorf("rootfs: mount overlay: %w", err)
	}
	return nil
}

// withFSIDs runs f on a thread whose filesystem uid and gid are id and
// whose effective capabilities are all it is permitted (setfsuid drops
// the filesystem ones). The thread is discarded afterwards.
func withFSIDs(id uint32, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: Go discards the thread
		_, _ = unix.SetfsgidRetGid(int(id))
		_, _ = unix.SetfsuidRetUid(int(id))
		if got, _ := unix.SetfsuidRetUid(-1); got != int(id) {
			errc <- fmt.Errorf("rootfs: setfsuid %d failed", id)
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("rootfs: capget: %w", err)
			return
		}
		data[0].Effective, data[1].Effective = data[0].Permitted, data[1].Permitted
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("rootfs: capset: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// idmapMount mounts an idmapped clone of the mount at src (mount_setattr
// with MOUNT_ATTR_IDMAP, the mapping of the user namespace userns) on dst.
func idmapMount(src, dst string, userns int) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("rootfs: open_tree %s: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("rootfs: idmap %s (kernel 5.12+ and a filesystem with idmapped mounts are required): %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("rootfs: move_mount %s: %w", dst, err)
	}
	return nil
}

func newImage(ctx context.Context, path string, sizeMB int, blankDir string) error {
	if blankDir == "" {
		return MakeImage(ctx, path, sizeMB)
	}
	blank := filepath.Join(blankDir, fmt.Sprintf("blank-%d.ext4", sizeMB))
	if _, err := os.Stat(blank); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(blankDir, 0o700); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		tmpDir, err := os.MkdirTemp(blankDir, ".mk-")
		if err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		defer os.RemoveAll(tmpDir)
		tmp := filepath.Join(tmpDir, "blank.ext4")
		if err := MakeImage(ctx, tmp, sizeMB); err != nil {
			return err
		}
		if err := os.Rename(tmp, blank); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return CopySparse(blank, path)
}

// CopySparse copies src to a new file dst, writing only src's data extents
// (found with SEEK_DATA/SEEK_HOLE), so holes stay holes.
func CopySparse(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("rootfs: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := out.Truncate(st.Size()); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	size := st.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("rootfs: seek data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("rootfs: seek hole: %w", err)
		}
		for pos := data; pos < hole; {
			srcOff, dstOff := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &srcOff, int(out.Fd()), &dstOff, int(hole-pos), 0)
			if err != nil {
				return fmt.Errorf("rootfs: copy: %w", err)
			}
			if n == 0 {
				return fmt.Errorf("rootfs: copy: short read at %d", pos)
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

// MountDisk mounts only the image (no overlay); used to read or fill the
// upper directory of a capsule that is not running.
func MountDisk(p Paths) error {
	if err := os.MkdirAll(p.Disk(), 0o700); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return mountImage(p.Image(), p.Disk())
}

// mountImage attaches img to a free loop device (autoclear) and mounts it.
func mountImage(img, target string) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return fmt.Errorf("rootfs: get free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := openLoop(dev, n)
		if err != nil {
			return err
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], img)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			lf.Close()
			continue // raced with another user of the device
		}
		if err != nil {
			lf.Close()
			return fmt.Errorf("rootfs: configure %s: %w", dev, err)
		}
		merr := unix.Mount(dev, target, "ext4", unix.MS_NOATIME, "noinit_itable")
		// Closing our fd leaves the mount as the only holder; with
		// autoclear the device is released when the mount goes.
		lf.Close()
		if merr != nil {
			return fmt.Errorf("rootfs: mount %s: %w", dev, merr)
		}
		return nil
	}
	return errors.New("rootfs: no free loop device")
}

func openLoop(dev string, n int) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		// Without devtmpfs udev the node may be missing: make it.
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("rootfs: mknod %s: %w", dev, err)
		}
		f, err = os.OpenFile(dev, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	return f, nil
}

// Unmount unmounts the overlay and the image (releasing the loop device).
// It is idempotent.
func Unmount(p Paths) error {
	var errs []error
	for _, m := range []string{p.Root(), p.IDDisk(), p.Lower(), p.Disk()} {
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, waitImageReleased(p))
	}
	return errors.Join(errs...)
}

// UnmountDisk unmounts only the image.
func UnmountDisk(p Paths) error {
	if err := unmount(p.Disk()); err != nil {
		return err
	}
	return waitImageReleased(p)
}

// waitImageReleased waits until the loop device's autoclear (which the
// kernel may finish after umount returns) has let go of the image, so that
// after Unmount no loop device refers to it.
func waitImageReleased(p Paths) error {
	return WaitLoopDetached(context.Background(), p.Image(), 5*time.Second)
}

func unmount(target string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			continue // stacked mounts: unmount until none is left
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY) && i < 50:
			time.Sleep(10 * time.Millisecond)
		default:
			return fmt.Errorf("rootfs: unmount %s: %w", target, err)
		}
	}
}

// Remove unmounts everything and deletes the capsule directory.
func Remove(p Paths) error {
	if err := Unmount(p); err != nil {
		return err
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

// Usage returns the used and total bytes of the mounted image.
func Usage(p Paths) (used, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.Disk(), &st); err != nil {
		return 0, 0, fmt.Errorf("rootfs: statfs: %w", err)
	}
	total = st.Blocks * uint64(st.Bsize)
	return total - st.Bfree*uint64(st.Bsize), total, nil
}

// MountsUnder lists mount points at or below dir (from /proc/self/mountinfo).
func MountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
