package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WaitLoopDetached polls until no loop device has image as its backing file
// (autoclear may finish asynchronously after the unmount returns).
func WaitLoopDetached(ctx context.Context, image string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		devs, err := LoopDevicesFor(image)
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rootfs: image %s still attached to %s", image, strings.Join(devs, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// LoopDevicesFor lists the loop devices whose backing file is path (from
// /sys/block/loopN/loop/backing_file).
func LoopDevicesFor(path string) ([]string, error) {
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
