package network

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// mountsAt counts the mounts whose mount point is path.
func mountsAt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			n++
		}
	}
	return n
}

// pin bind-mounts this process's network namespace at path, as a netns
// pin in /run/netns is.
func pin(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/proc/self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
}

func unpin(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		return err
	}
	return os.Remove(path)
}

// TestNetnsDirSurvivesIPNetnsAdd: with the directory prepared first (as
// EnsureNetnsDir does for /run/netns), a later `ip netns add`'s own
// preparation (bind over itself unless it is a mount point, make shared)
// mounts nothing over it, so the namespaces pinned before stay removable.
// Without it, that preparation hides them and their removal fails with
// EBUSY: the leak this prevents.
func TestNetnsDirSurvivesIPNetnsAdd(t *testing.T) {
	testutil.RequireRoot(t)
	for _, prepared := range []bool{true, false} {
		dir := filepath.Join(t.TempDir(), "netns")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			for range 4 {
				_ = unix.Unmount(filepath.Join(dir, "a"), unix.MNT_DETACH)
				_ = unix.Unmount(dir, unix.MNT_DETACH)
			}
		})
		if prepared {
			if err := ensureSharedMount(dir); err != nil {
				t.Fatal(err)
			}
		}
		pin(t, filepath.Join(dir, "a"))
		// What iproute2 does before each `ip netns add`.
		if err := ensureSharedMount(dir); err != nil {
			t.Fatal(err)
		}
		if got := mountsAt(t, dir); got != 1 {
			t.Errorf("prepared=%v: %d mounts at the directory, want 1", prepared, got)
		}
		err := unpin(filepath.Join(dir, "a"))
		switch {
		case prepared && err != nil:
			t.Errorf("prepared: removing a pin made before `ip netns add`: %v", err)
		case !prepared && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EINVAL):
			t.Errorf("unprepared: removing the hidden pin: %v, want EBUSY or EINVAL (the leak)", err)
		}
	}
}
