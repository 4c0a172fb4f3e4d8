package rootfs

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// BindClone mounts a clone of the mount at src on dst (open_tree, then
// move_mount), idmapped with the user namespace userns when it is not
// negative (on-disk ids 0..n appear as the namespace's ids) and read-only
// at the mount level when readOnly: a bind that the capsule can neither
// remount writable nor see other ids through. Volumes use it
// (docs/VOLUMES.md).
func BindClone(src, dst string, userns int, readOnly bool) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("rootfs: open_tree %s: %w", src, err)
	}
	defer unix.Close(fd)
	var attr unix.MountAttr
	if userns >= 0 {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns)
	}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	attr.Attr_set |= unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("rootfs: mount_setattr %s: %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("rootfs: move_mount %s: %w", dst, err)
	}
	return nil
}

// MountImage attaches the ext4 image img to a free loop device (autoclear:
// released with the mount) and mounts it on target.
func MountImage(img, target string) error {
	if err := os.MkdirAll(target, 0o700); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return mountImage(img, target)
}

// UnmountImage unmounts target (the mount of img) and waits until no loop
// device refers to img any more.
func UnmountImage(img, target string) error {
	if err := unmount(target); err != nil {
		return err
	}
	return WaitLoopDetached(context.Background(), img, 5*time.Second)
}
