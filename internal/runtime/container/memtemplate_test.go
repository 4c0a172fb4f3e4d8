package container_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// memTemplateDriver opens a CRIU driver with user namespaces on (the
// default) on subnet 10.<octet>.0.0/16 (10.20-10.29: this file's tests).
func memTemplateDriver(t *testing.T, octet int) *container.Driver {
	t.Helper()
	cfg := criuConfig(t)
	cfg.Network.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", octet))
	d := openDriver(t, cfg)
	if !d.MemorySnapshots() {
		t.Fatalf("memory snapshots off with user namespaces on: %s", d.CRIUUnavailableReason())
	}
	return d
}

// makeMemoryTemplate does what the host agent's snapshotToTemplate does
// with a driver: checkpoint the running capsule's memory (it keeps
// running), freeze it, archive its files, thaw it, and import both into
// the template store as name.
func makeMemoryTemplate(t *testing.T, d *container.Driver, id, name string) *template.Memory {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	arch := filepath.Join(dir, "memory.tar")
	md, err := d.ExportMemory(ctx, id, arch)
	if err != nil {
		t.Fatalf("ExportMemory: %v", err)
	}
	if err := d.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	if err := d.ExportTemplate(ctx, id, tarball); err != nil {
		t.Fatalf("ExportTemplate: %v", err)
	}
	if err := d.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := templates.ImportWithMemory(ctx, name, tarball, &template.Memory{Archive: arch, Metadata: md}); err != nil {
		t.Fatalf("ImportWithMemory: %v", err)
	}
	t.Cleanup(func() { _ = templates.Delete(name) })
	mem, err := templates.Memory(name)
	if err != nil {
		t.Fatal(err)
	}
	return mem
}

// TestMemoryTemplateWithUserNS (issue 16): with user namespaces on, a
// template made from a running capsule with memory starts capsules with
// the capsule's processes running (memory kept: the same counter process,
// same PID, carrying on from its count), each in its own id range, twice
// from the same template, while the source capsule keeps running. It
// failed with "restore mount points: mkdirat sys/fs: permission denied":
// the exported rootfs held the mount points /proc and /sys with the
// modes of the file systems mounted on them (0555), which capsule root
// (no CAP_DAC_OVERRIDE over the template) could not create mount points in.
func TestMemoryTemplateWithUserNS(t *testing.T) {
	d := memTemplateDriver(t, 20)
	ctx := testutil.Context(t, 5*time.Minute)
	const src = "cl-memtmpl-src"
	info := startCapsule(t, d, runtime.Spec{ID: src})
	if hostIDBase(t, info.PID) == "0" {
		t.Fatal("capsule without a user namespace")
	}
	execIn(ctx, t, d, src, "echo kept > /root/file && chown 1000:1001 /root/file")
	startCounter(ctx, t, d, info)
	pid := execIn(ctx, t, d, src, "cat /tmp/counter.pid")
	name := fmt.Sprintf("memtmpl-%d", os.Getpid())
	mem := makeMemoryTemplate(t, d, src, name)

	// The template stores capsule ids (root = 0), as an image does, not the
	// source capsule's host range.
	tm, err := templates.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".", "root/file", "sys", "proc", "dev"} {
		fi, err := os.Lstat(filepath.Join(tm.Rootfs, p))
		if err != nil {
			t.Fatal(err)
		}
		uid, gid := fileOwner(fi)
		want := [2]uint32{0, 0}
		if p == "root/file" {
			want = [2]uint32{1000, 1001}
		}
		if [2]uint32{uid, gid} != want {
			t.Errorf("template %s owned by %d:%d, want %d:%d", p, uid, gid, want[0], want[1])
		}
		if fi.IsDir() && fi.Mode().Perm()&0o200 == 0 {
			t.Errorf("template directory %s has mode %o: capsule root cannot make mount points in it", p, fi.Mode().Perm())
		}
	}

	for i, id := range []string{"cl-memtmpl-a", "cl-memtmpl-b", "cl-memtmpl-c"} {
		if i == 2 {
			// A template exported before the fix: /proc and /sys with the
			// modes of procfs and sysfs. The restore still makes its mount
			// points (capsule root owns the directories).
			for _, p := range []string{"proc", "sys"} {
				if err := os.Chmod(filepath.Join(tm.Rootfs, p), 0o555); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, err := d.CreateFromMemory(ctx, runtime.Spec{ID: id, Template: name}, mem.Archive, mem.Metadata)
		if err != nil {
			t.Fatalf("CreateFromMemory #%d: %v", i, err)
		}
		if !got.MemoryKept || got.State != runtime.StateRunning {
			t.Fatalf("CreateFromMemory #%d = %+v, want running with memory kept", i, got)
		}
		if base := hostIDBase(t, got.PID); base == "0" || base == hostIDBase(t, info.PID) {
			t.Errorf("capsule %s runs with id base %s (source %s): want a range of its own", id, base, hostIDBase(t, info.PID))
		}
		before := readCounter(ctx, t, d, id)
		if before == 0 {
			t.Fatalf("%s: no counter after the restore", id)
		}
		if !waitFor(testutil.Short, func() bool { return readCounter(ctx, t, d, id) > before }) {
			t.Fatalf("%s: counter stuck at %d", id, before)
		}
		if p := execIn(ctx, t, d, id, "cat /tmp/counter.pid"); p != pid {
			t.Errorf("%s: counter pid %s, want %s (the template's process)", id, p, pid)
		}
		if own := execIn(ctx, t, d, id, "cat /root/file; stat -c '%u %g' /root/file; touch /root/new && mkdir -p /srv/x && echo ok"); own != "kept\n1000 1001\nok" {
			t.Errorf("%s: files = %q", id, own)
		}
	}
	// The source is unaffected.
	before := readCounter(ctx, t, d, src)
	if !waitFor(testutil.Short, func() bool { return readCounter(ctx, t, d, src) > before }) {
		t.Fatalf("source counter stuck at %d", before)
	}
	if mode := execIn(ctx, t, d, "cl-memtmpl-c", "stat -c %a /sys /proc"); mode != "555\n555" {
		t.Errorf("modes of /sys and /proc after the restore: %q, want them unchanged (555)", mode)
	}
	for _, id := range []string{src, "cl-memtmpl-a", "cl-memtmpl-b", "cl-memtmpl-c"} {
		if err := d.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, d)
}

// fileOwner is fi's uid and gid.
func fileOwner(fi os.FileInfo) (uint32, uint32) {
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}
