package snapshot

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestDiskImage processes a real ext4 image (a rootfs), changes a file in it
// and stores the change as a diff, the way a paused capsule's disk is kept.
func TestDiskImage(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (Debian package e2fsprogs): %v", tool, err)
		}
	}
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	disk := filepath.Join(dir, "rootfs.ext4")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(256 << 20); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", disk)

	m := &Manager{Store: openLocal(t), MaxDiffGenerations: 4, TempDir: dir}
	h0, err := m.Pause(ctx, "disk", disk, PauseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stored := h0.Counts().Stored * h0.BlockSize; stored > 32<<20 {
		t.Fatalf("a fresh 256 MiB ext4 image stored %d bytes", stored)
	}

	payload := filepath.Join(dir, "payload")
	if err := os.WriteFile(payload, bytes.Repeat([]byte("wrenn capsule data\n"), 10000), 0o600); err != nil {
		t.Fatal(err)
	}
	run("debugfs", "-w", "-R", "write "+payload+" payload.txt", disk)
	h1, err := m.Pause(ctx, "disk", disk, PauseOptions{Parent: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	c := h1.Counts()
	if c.Stored == 0 || c.Stored > 200 || c.Inherited == 0 {
		t.Fatalf("diff after writing one 190 KB file: %+v", c)
	}

	r, err := m.Open(ctx, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	restored := filepath.Join(dir, "restored.ext4")
	if err := r.WriteFile(ctx, restored); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(restored)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("restored disk image differs")
	}
	run("e2fsck", "-f", "-n", restored)
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "cat payload.txt", restored).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := os.ReadFile(payload); !bytes.Equal(out, want) {
		t.Fatal("file read back from the restored disk differs")
	}
}
