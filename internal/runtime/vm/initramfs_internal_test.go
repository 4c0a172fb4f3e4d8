package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitramfsCpio checks the newc archive with cpio(1): every member is
// there with its content and mode.
func TestInitramfsCpio(t *testing.T) {
	dir := t.TempDir()
	kdir := filepath.Join(dir, "kernel")
	if err := os.MkdirAll(filepath.Join(kdir, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(kdir, "modules", "order"), "a.ko\nb.ko\n")
	mustWrite(t, filepath.Join(kdir, "modules", "a.ko"), "AAA")
	mustWrite(t, filepath.Join(kdir, "modules", "b.ko"), "B")
	mustWrite(t, filepath.Join(dir, "busybox"), "busybox!")
	mustWrite(t, filepath.Join(dir, "envd"), strings.Repeat("e", 5001))
	dst := filepath.Join(dir, "initrd")
	if err := buildInitramfs(dst, kdir, filepath.Join(dir, "busybox"), filepath.Join(dir, "envd"), []byte("#!/bin/sh\n")); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("WRENN_VM_KEEP_INITRD") != "" {
		t.Logf("initrd at %s", dst)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-idm", "--quiet", "-F", dst)
	cmd.Dir = out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, b)
	}
	for name, want := range map[string]string{
		"init": "#!/bin/sh\n", "bin/busybox": "busybox!", "envd": strings.Repeat("e", 5001),
		"lib/modules/order": "a.ko\nb.ko\n", "lib/modules/a.ko": "AAA", "lib/modules/b.ko": "B",
	} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || string(b) != want {
			t.Errorf("%s: %v %q", name, err, b)
		}
	}
	if st, err := os.Stat(filepath.Join(out, "init")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("init mode: %v %v", st.Mode(), err)
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
