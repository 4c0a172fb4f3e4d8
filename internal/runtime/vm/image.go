package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/template"
)

// templateImage returns the read-only ext4 image of tmpl's rootfs,
// building it once per template version (its creation time names it) and
// sharing it between all the template's capsules.
func (d *Driver) templateImage(ctx context.Context, tmpl template.Template) (string, error) {
	path := filepath.Join(d.cfg.StateDir, "images", fmt.Sprintf("%s-%d.ext4", tmpl.Name, tmpl.CreatedAt.UnixNano()))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	d.imageMu.Lock()
	mu := d.imageFor[tmpl.Name]
	if mu == nil {
		mu = &sync.Mutex{}
		d.imageFor[tmpl.Name] = mu
	}
	d.imageMu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	t0 := time.Now()
	files := 0
	err := filepath.WalkDir(tmpl.Rootfs, func(_ string, _ fs.DirEntry, err error) error {
		files++
		return err
	})
	if err != nil {
		return "", fmt.Errorf("vm: template %s: %w", tmpl.Name, err)
	}
	size := tmpl.SizeBytes + tmpl.SizeBytes/4 + int64(files)*4096 + 32<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	defer os.Remove(tmp)
	if err := mkfs(ctx, tmp, size, tmpl.Rootfs, "-N", strconv.Itoa(files+files/4+1024), "-O", "^has_journal", "-L", "wrenn-template"); err != nil {
		return "", fmt.Errorf("vm: image of template %s (%w): the template cannot boot as a microVM", tmpl.Name, err)
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	d.log.Info("template image built", "template", tmpl.Name, "bytes", size, "files", files, "took", time.Since(t0))
	return path, nil
}

// mkfs makes a sparse file of size bytes holding an ext4 file system
// filled from dir.
func mkfs(ctx context.Context, path string, size int64, dir string, extra ...string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := errors.Join(f.Truncate(size), f.Close()); err != nil {
		return err
	}
	args := append([]string{"-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", dir}, extra...)
	args = append(args, path)
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// makeDisk makes the capsule's writable disk: a sparse ext4 file of the
// capsule's disk size holding the overlay's upper and work directories
// and the environment the guest init gives envd.
func (d *Driver) makeDisk(ctx context.Context, rec *record) error {
	stage := filepath.Join(d.dir(rec.Key), "stage")
	defer os.RemoveAll(stage)
	for _, sub := range []string{"upper", "work", "wrenn"} {
		if err := os.MkdirAll(filepath.Join(stage, sub), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(stage, "wrenn"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "wrenn", "env"), envFile(rec), 0o600); err != nil {
		return err
	}
	if err := mkfs(ctx, d.diskPath(rec.Key), int64(rec.Spec.DiskSizeMB)<<20, stage, "-L", "wrenn-disk"); err != nil {
		return fmt.Errorf("vm: writable disk: %w", err)
	}
	return nil
}

// procStats reads a process's CPU time, resident memory and thread count.
func procStats(pid int) (cpu time.Duration, rss, threads uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("vm: vmm process: %w", err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, errors.New("vm: bad /proc stat")
	}
	f := strings.Fields(string(b[i+2:]))
	// Fields after the command: state is f[0]; utime f[11], stime f[12],
	// num_threads f[17], rss (pages) f[21].
	if len(f) < 22 {
		return 0, 0, 0, errors.New("vm: short /proc stat")
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	th, _ := strconv.ParseUint(f[17], 10, 64)
	pages, _ := strconv.ParseUint(f[21], 10, 64)
	const hz = 100 // USER_HZ on Linux
	cpu = time.Duration(ut+st) * time.Second / hz
	if cpu == 0 {
		cpu = time.Millisecond // a VM that booted has used CPU; a tick may not have been counted yet
	}
	return cpu, pages * uint64(os.Getpagesize()), th, nil //nolint:gosec // page size is positive
}

// diskAllocated is the bytes a sparse file occupies.
func diskAllocated(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Blocks) * 512 //nolint:gosec // positive
	}
	return 0
}

// buildEnvdDisk makes the read-only ext4 image holding envd that every
// guest mounts (/dev/vdc).
func buildEnvdDisk(ctx context.Context, dst, envd string) error {
	st, err := os.Stat(envd)
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp(filepath.Dir(dst), "envd-stage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	b, err := os.ReadFile(envd)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "envd"), b, 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	defer os.Remove(tmp)
	size := (st.Size() + st.Size()/8 + 4<<20 + 1<<20 - 1) &^ (1<<20 - 1)
	if err := mkfs(ctx, tmp, size, stage, "-O", "^has_journal", "-L", "wrenn-envd"); err != nil {
		return fmt.Errorf("vm: envd disk: %w", err)
	}
	return os.Rename(tmp, dst)
}
