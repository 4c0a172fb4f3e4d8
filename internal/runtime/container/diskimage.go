package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	if err := waitLoopDetached(ctx, p.Image(), 5*time.Second); err != nil {
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

// waitLoopDetached polls until no loop device has image as its backing file
// (autoclear may finish asynchronously after the unmount returns).
func waitLoopDetached(ctx context.Context, image string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		devs, err := loopDevicesFor(image)
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("capsule disk %s still attached to %s", image, strings.Join(devs, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// loopDevicesFor lists the loop devices whose backing file is path (from
// /sys/block/loopN/loop/backing_file).
func loopDevicesFor(path string) ([]string, error) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if errors.Is(err, os.ErrNotExist) {
			continue // not configured
		}
		if err != nil {
			return nil, fmt.Errorf("loop device %s: %w", e.Name(), err)
		}
		if strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)") == path {
			out = append(out, "/dev/"+e.Name())
		}
	}
	return out, nil
}
