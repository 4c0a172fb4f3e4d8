package rootfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func loopsBackedBy(t *testing.T, img string) int {
	t.Helper()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	n := 0
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == img {
			n++
		}
	}
	return n
}

func TestOverlayWithQuota(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	lower := t.TempDir()
	if err := os.WriteFile(filepath.Join(lower, "base"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := rootfs.Paths{Dir: filepath.Join(t.TempDir(), "c1")}
	t.Cleanup(func() { _ = rootfs.Remove(p) })
	err := rootfs.Mount(ctx, p, lower, 16, "", func(upper string) error {
		return os.WriteFile(filepath.Join(upper, "prefilled"), []byte("snap"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := loopsBackedBy(t, p.Image()); got != 1 {
		t.Errorf("loop devices on the image = %d, want 1", got)
	}
	for name, want := range map[string]string{"base": "lower", "prefilled": "snap"} {
		b, err := os.ReadFile(filepath.Join(p.Root(), name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	// Writes land in the upper layer, never in the template.
	if err := os.WriteFile(filepath.Join(p.Root(), "base"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(lower, "base")); string(b) != "lower" {
		t.Errorf("lower changed to %q", b)
	}
	// The quota holds: 32 MiB do not fit on a 16 MiB disk.
	f, err := os.Create(filepath.Join(p.Root(), "big"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 32 && werr == nil; i++ {
		_, werr = f.Write(buf)
	}
	if werr == nil {
		werr = f.Sync()
	}
	f.Close()
	if !errors.Is(werr, unix.ENOSPC) {
		t.Errorf("write past the quota: err = %v, want ENOSPC", werr)
	}
	used, total, err := rootfs.Usage(p)
	if err != nil || total > 16<<20 || used == 0 {
		t.Errorf("Usage = %d/%d, %v", used, total, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p.Image(), &st); err != nil || st.Blocks*512 > 17<<20 {
		t.Errorf("image occupies %d bytes on the host", st.Blocks*512)
	}
	if err := rootfs.Unmount(p); err != nil {
		t.Fatal(err)
	}
	if err := rootfs.Unmount(p); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
	if got := loopsBackedBy(t, p.Image()); got != 0 {
		t.Errorf("loop devices after Unmount = %d, want 0 (autoclear)", got)
	}
	mounts, _ := rootfs.MountsUnder(p.Dir)
	if len(mounts) != 0 {
		t.Errorf("mounts left: %v", mounts)
	}
	// Mounting again (re-adoption) keeps the data.
	if err := rootfs.Mount(ctx, p, lower, 16, filepath.Join(p.Dir, "..", "blank"), nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(p.Root(), "base")); string(b) != "changed" {
		t.Errorf("after remount base = %q", b)
	}
	if err := rootfs.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir left after Remove: %v", err)
	}
}

func TestMakeImageRejectsTiny(t *testing.T) {
	if err := rootfs.MakeImage(testutil.Context(t, testutil.Short), filepath.Join(t.TempDir(), "x"), 1); err == nil {
		t.Errorf("1 MB image accepted")
	}
}

func TestBlankImageCache(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	lower := t.TempDir()
	base := t.TempDir()
	blank := filepath.Join(base, "blank")
	for i := range 2 {
		p := rootfs.Paths{Dir: filepath.Join(base, "c", string(rune('a'+i)))}
		t.Cleanup(func() { _ = rootfs.Remove(p) })
		if err := rootfs.Mount(ctx, p, lower, 512, blank, nil); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p.Image(), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != 512<<20 || st.Blocks*512 > 32<<20 {
			t.Errorf("image: size %d, allocated %d; want 512 MiB sparse", st.Size, st.Blocks*512)
		}
		if err := os.WriteFile(filepath.Join(p.Root(), "f"), []byte("x"), 0o644); err != nil {
			t.Errorf("write on cloned image: %v", err)
		}
		if _, total, err := rootfs.Usage(p); err != nil || total < 400<<20 {
			t.Errorf("cloned fs size %d, %v", total, err)
		}
	}
	entries, _ := os.ReadDir(blank)
	if len(entries) != 1 || entries[0].Name() != "blank-512.ext4" {
		t.Errorf("blank cache holds %v, want one blank-512.ext4", entries)
	}
}
