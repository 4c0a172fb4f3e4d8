package container_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestGVisorUnusableRunsc: a host without a usable runsc gets a clear
// error from New naming what is wrong and how to fix it, and no driver.
func TestGVisorUnusableRunsc(t *testing.T) {
	cfg := gvisorConfig(t)
	script := filepath.Join(t.TempDir(), "runsc")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, path, want string }{
		{"missing", filepath.Join(t.TempDir(), "no-runsc"), "runsc not found (scripts/runsc.sh builds it)"},
		{"dynamic", "/bin/true", "is dynamically linked; build it with CGO_ENABLED=0 (scripts/runsc.sh)"},
		{"not a binary", script, "container: runsc " + script},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			c.RunscPath = tt.path
			c.StateDir = t.TempDir()
			d, err := container.New(testutil.Context(t, time.Minute), c)
			if err == nil {
				_ = d.Close()
				t.Fatalf("New with runsc %s: no error", tt.path)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New with runsc %s: %v, want it to say %q", tt.path, err, tt.want)
			}
		})
	}
}

// TestGVisorBadMemoryImage (issue 18): a memory restore that cannot be
// used — `runsc restore` over its time limit (a CI pass once restored a
// capsule that then answered /health while exec got 502), a corrupted
// checkpoint image, an image written by another runsc build — falls back
// to booting the capsule with its files: Restore succeeds with
// MemoryKept=false, exactly one sandbox serves the capsule and every exec
// works, and the memory image stays in the snapshot store. With nothing
// wrong the same capsule is then restored with its memory.
func TestGVisorBadMemoryImage(t *testing.T) {
	suiteTime(t)
	cfg := gvisorConfig(t)
	d := openGVisor(t, cfg)
	ctx := testutil.Context(t, 5*time.Minute)
	const id = "cl-gbad"
	startCapsule(t, d, runtime.Spec{ID: id})
	if out, err := runcExec(ctx, d, id, "sh", "-c", "echo kept > /root/keep"); err != nil {
		t.Fatalf("exec: %v: %s", err, out)
	}
	cases := []struct {
		name string
		set  func() (undo func())
		// mayKeep: the attempt may also finish in time (a time limit
		// that lands wherever the restore happens to be).
		mayKeep bool
	}{
		{"restore over its time limit at once", func() func() {
			return container.SetRunscRestoreBudget(func(int64) time.Duration { return time.Millisecond })
		}, false},
		{"restore over its time limit midway", func() func() {
			return container.SetRunscRestoreBudget(func(int64) time.Duration { return 120 * time.Millisecond })
		}, true},
		{"corrupted checkpoint image", func() func() {
			return container.SetBeforeRunscRestore(func(images string) { corruptImages(t, images) })
		}, false},
		{"image of another runsc build", func() func() {
			return container.SetRunscSHA(d, strings.Repeat("ab", 32))
		}, false},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := d.Snapshot(ctx, id)
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			if len(snap.Keys) < 2 {
				t.Fatalf("snapshot %+v has no memory image", snap)
			}
			undo := tt.set()
			info, err := d.Restore(ctx, snap)
			undo()
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if info.MemoryKept && !tt.mayKeep {
				t.Errorf("MemoryKept = true after a memory restore that could not work")
			}
			t.Logf("memory kept: %v", info.MemoryKept)
			r, err := d.SnapshotManager().Open(ctx, snap.Keys[1])
			if err != nil {
				t.Errorf("the memory image %s is gone from the store: %v", snap.Keys[1], err)
			} else {
				_ = r.Close()
			}
			runtimetest.WaitHealthy(t, info)
			for i := range 5 {
				out, err := runcExec(ctx, d, id, "cat", "/root/keep")
				if err != nil || strings.TrimSpace(out) != "kept" {
					t.Errorf("exec %d after the fallback: %v: %q", i, err, out)
				}
			}
			if n := sandboxes(t, cfg.StateDir); n != 1 {
				t.Errorf("%d gVisor sandboxes of this driver run, want 1", n)
			}
		})
	}
	t.Run("memory kept when nothing is wrong", func(t *testing.T) {
		if out, err := runcExec(ctx, d, id, "sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $! > /root/sleeper"); err != nil {
			t.Fatalf("exec: %v: %s", err, out)
		}
		snap, err := d.Snapshot(ctx, id)
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		info, err := d.Restore(ctx, snap)
		if err != nil || !info.MemoryKept {
			t.Fatalf("Restore: %v, MemoryKept %v", err, info.MemoryKept)
		}
		runtimetest.WaitHealthy(t, info)
		if out, err := runcExec(ctx, d, id, "sh", "-c", "kill -0 $(cat /root/sleeper) && echo alive"); err != nil || strings.TrimSpace(out) != "alive" {
			t.Errorf("the process from before the snapshot: %v: %q", err, out)
		}
	})
}

// openGVisor opens a gVisor driver on cfg (gvisorDriver with a config the
// test keeps).
func openGVisor(t *testing.T, cfg container.Config) *container.Driver {
	t.Helper()
	t.Cleanup(func() { unmountNullNetns(cfg.StateDir) })
	return openDriver(t, cfg)
}

// corruptImages overwrites the middle of every checkpoint file in dir.
func corruptImages(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return nil
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Errorf("corrupt %s: %v", p, err)
			return nil
		}
		defer f.Close()
		fi, _ := f.Stat()
		junk := []byte(strings.Repeat("\xde\xad\xbe\xef", 1024))
		if _, err := f.WriteAt(junk, fi.Size()/2); err != nil {
			t.Errorf("corrupt %s: %v", p, err)
		}
		return nil
	})
}

// sandboxes counts the runsc sandbox processes of the driver whose state
// directory is stateDir.
func sandboxes(t *testing.T, stateDir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	root := "--root=" + filepath.Join(stateDir, "runc")
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && args[0] == "runsc-sandbox" && slices.Contains(args, root) && slices.Contains(args, "boot") {
			n++
		}
	}
	return n
}
