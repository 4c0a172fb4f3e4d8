package container

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
)

// detachDisk makes a stopped capsule's ext4 image a quiescent file: it
// unmounts the overlay and the image (ext4 writes everything back on
// unmount; the autoclear loop device is released with the mount), waits
// until no loop device is backed by the image any more and fsyncs the file,
// so the snapshot engine reads exactly what the filesystem holds.
func detachDisk(ctx context.Context, p rootfs.Paths) error {
	if err := rootfs.Unmount(p); err != nil {
		return fmt.Errorf("unmount capsule disk: %w", err)
	}
	if err := rootfs.WaitLoopDetached(ctx, p.Image(), 5*time.Second); err != nil {
		return err
	}
	f, err := os.OpenFile(p.Image(), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open capsule disk: %w", err)
	}
	serr := f.Sync()
	if cerr := f.Close(); serr == nil {
		serr = cerr
	}
	if serr != nil {
		return fmt.Errorf("sync capsule disk: %w", serr)
	}
	return nil
}
