package template_test

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestBuildBusybox(t *testing.T) {
	testutil.RequireRoot(t) // chown of /home/user
	if _, err := os.Stat(template.BusyboxPath); err != nil {
		t.Fatalf("busybox-static not installed (apt-get install busybox-static): %v", err)
	}
	s := template.Store{Dir: t.TempDir()}
	ctx := testutil.Context(t, testutil.Long)
	tm, err := s.BuildBusybox(ctx, "minimal", "")
	if err != nil {
		t.Fatal(err)
	}
	if tm.SizeBytes < 500_000 {
		t.Errorf("size = %d, want at least the busybox binary", tm.SizeBytes)
	}
	for _, f := range []string{"bin/sh", "bin/ls", "etc/passwd", "tmp"} {
		if _, err := os.Lstat(filepath.Join(tm.Rootfs, f)); err != nil {
			t.Errorf("%s missing: %v", f, err)
		}
	}
	out, err := exec.Command("chroot", tm.Rootfs, "/bin/sh", "-c", "echo hi").CombinedOutput()
	if err != nil || string(out) != "hi\n" {
		t.Errorf("shell in template: %v %q", err, out)
	}
	got, err := s.Get("minimal")
	if err != nil || got.SizeBytes != tm.SizeBytes || got.Rootfs != tm.Rootfs {
		t.Errorf("Get = %+v, %v", got, err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Errorf("List = %+v, %v", list, err)
	}
	if err := s.Delete("minimal"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("minimal"); !errors.Is(err, template.ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
}

func TestImportDirAndTarball(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "os-release"), []byte("ID=test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("etc/os-release", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "root.tar.gz")
	if out, err := exec.Command("tar", "-czf", tarball, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	s := template.Store{Dir: t.TempDir()}
	ctx := testutil.Context(t, testutil.Long)
	tests := []struct {
		name    string
		import_ func() (template.Template, error)
	}{
		{"dir", func() (template.Template, error) { return s.ImportDir(ctx, "fromdir", src) }},
		{"tarball", func() (template.Template, error) { return s.ImportTarball(ctx, "fromtar", tarball) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tm, err := tt.import_()
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(tm.Rootfs, "link"))
			if err != nil || string(b) != "ID=test\n" {
				t.Errorf("content through symlink = %q, %v", b, err)
			}
			if got, want := tm.SizeBytes, int64(len("ID=test\n")); got != want {
				t.Errorf("size = %d, want %d", got, want)
			}
		})
	}
	if _, err := s.ImportDir(ctx, "../evil", src); err == nil {
		t.Errorf("ImportDir accepted a bad name")
	}
	if _, err := s.ImportDir(ctx, "x", filepath.Join(src, "etc", "os-release")); err == nil {
		t.Errorf("ImportDir accepted a file")
	}
}

func TestImportTarballStaysInside(t *testing.T) {
	dir := t.TempDir()
	tarball := filepath.Join(dir, "evil.tar")
	f, err := os.Create(tarball)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, name := range []string{"../escaped", "/abs-escaped", "ok"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s := template.Store{Dir: filepath.Join(dir, "store")}
	_, _ = s.ImportTarball(context.Background(), "evil", tarball)
	for _, p := range []string{filepath.Join(dir, "escaped"), filepath.Join(dir, "store", "escaped"), "/abs-escaped"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("tar member escaped to %s", p)
			_ = os.Remove(p)
		}
	}
}

func TestDebianRecipeHash(t *testing.T) {
	a := template.DefaultDebianRecipe("http://deb.debian.org/debian")
	b := template.DefaultDebianRecipe("http://deb.debian.org/debian")
	if a.Hash() != b.Hash() {
		t.Errorf("same recipe, different hashes")
	}
	b.Packages = append(b.Packages, "vim")
	if a.Hash() == b.Hash() {
		t.Errorf("different recipes, same hash")
	}
}

// TestBuildDebian builds the real "base" template; it needs debootstrap and
// a Debian mirror, and takes minutes, so it runs only without -short.
func TestBuildDebian(t *testing.T) {
	testutil.RequireRoot(t)
	if testing.Short() {
		t.Skip("debootstrap build takes minutes; runs without -short")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Skip("debootstrap not installed (apt-get install debootstrap)")
	}
	s := template.Store{Dir: t.TempDir()}
	ctx := testutil.Context(t, 20*60*1e9)
	tm, err := s.BuildDebian(ctx, "base", template.DefaultDebianRecipe("http://deb.debian.org/debian"), "/var/cache/wrenn")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"bin/bash", "usr/bin/python3", "usr/bin/curl", "usr/bin/git", "etc/debian_version"} {
		if _, err := os.Stat(filepath.Join(tm.Rootfs, f)); err != nil {
			t.Errorf("%s missing: %v", f, err)
		}
	}
}
