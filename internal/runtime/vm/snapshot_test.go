package vm_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

const mib = 1 << 20

// snapshotConfig is testConfig with a snapshot manager the test can read
// (and share between drivers); maxGen > 1 keeps a re-pause as a diff.
func snapshotConfig(t *testing.T, storeDir string, maxGen int) vm.Config {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	st, err := store.OpenLocal(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.Snapshots = &snapshot.Manager{Store: st, TempDir: t.TempDir(), MaxDiffGenerations: maxGen}
	return cfg
}

// imageBytes returns the bytes an image stores in all its builds and in
// its own (newest) build.
func imageBytes(t *testing.T, m *snapshot.Manager, name string) (total, own int64) {
	t.Helper()
	r, err := m.Open(context.Background(), name)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	h := r.Header()
	for _, mp := range h.Mappings {
		if mp.Zero {
			continue
		}
		n := mp.Count * h.BlockSize
		total += n
		if mp.Build == h.BuildID {
			own += n
		}
	}
	return total, own
}

// guestUsed returns the guest's MemTotal - MemAvailable (used) and the
// memory it holds for anything: RAM - MemFree (kernel image and memmap,
// which MemTotal leaves out, slab, page cache and processes), in bytes.
func guestUsed(t *testing.T, d runtime.Driver, id string, memMB int) (used, held int64) {
	t.Helper()
	ctx := testutil.Context(t, time.Minute)
	out, err := exec1(ctx, d, id, "sh", "-c", "grep -E '^(MemTotal|MemAvailable|MemFree):' /proc/meminfo")
	if err != nil {
		t.Fatalf("meminfo: %v: %s", err, out)
	}
	var total, avail, free int64
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = v << 10
		case "MemAvailable:":
			avail = v << 10
		case "MemFree:":
			free = v << 10
		}
	}
	return total - avail, int64(memMB)*mib - free
}

func mustExec(t *testing.T, d runtime.Driver, id, script string) string {
	t.Helper()
	ctx := testutil.Context(t, 3*time.Minute)
	out, err := exec1(ctx, d, id, "sh", "-c", script)
	if err != nil {
		t.Fatalf("exec %q: %v: %s", script, err, out)
	}
	return out
}

// TestMemorySnapshot covers the memory path end to end: a guest fills 200
// MiB and frees 150 MiB (the balloon and free page reporting keep the
// freed memory out of the image); a file and a tmpfs file (memory only)
// survive a restore on a second driver sharing the store; a re-pause
// after touching about 1 % of memory stores a diff.
func TestMemorySnapshot(t *testing.T) {
	storeDir := t.TempDir()
	cfg1 := snapshotConfig(t, storeDir, 3)
	d1 := openDriver(t, cfg1)
	ctx := testutil.Context(t, 10*time.Minute)
	const memMB = 320
	startCapsule(t, d1, runtime.Spec{ID: "cl-mem", MemoryMB: memMB})
	mustExec(t, d1, "cl-mem", `set -e
mkdir -p /mnt/fill && mount -t tmpfs -o size=260m tmpfs /mnt/fill
for i in $(seq 1 200); do dd if=/dev/urandom of=/mnt/fill/$i bs=1M count=1 2>/dev/null; done
for i in $(seq 51 200); do rm /mnt/fill/$i; done
echo on-disk > /root/disk-marker
mkdir -p /run/m && echo in-memory > /run/m/marker
sync`)
	used, held := guestUsed(t, d1, "cl-mem", memMB)
	// No wait for the guest's periodic balloon statistics (every 5 s):
	// Snapshot asks for fresh ones, so the freed memory is seen at once.
	t0 := time.Now()
	snap, err := d1.Snapshot(ctx, "cl-mem")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	took := time.Since(t0)
	memTotal, _ := imageBytes(t, cfg1.Snapshots, snap.ID+".mem")
	diskTotal, _ := imageBytes(t, cfg1.Snapshots, snap.ID+".disk")
	t.Logf("pause to disk of a %d MiB guest (after freeing 150 of 200 MiB: used %d MiB, held %d MiB): RAM image %.1f MiB (%.2f x used, %.2f x held), disk image %.1f MiB, took %v",
		memMB, used/mib, held/mib, float64(memTotal)/mib, float64(memTotal)/float64(used), float64(memTotal)/float64(held), float64(diskTotal)/mib, took.Round(time.Millisecond))
	// Without the balloon and free page reporting the freed 150 MiB of
	// random data would be stored (over 200 MiB); with statistics older
	// than the free (before the driver asked for fresh ones) the balloon
	// took less and the image kept ~60 MiB of the freed data.
	if memTotal > 160*mib {
		t.Errorf("RAM image stores %d MiB: the freed memory was not dropped", memTotal/mib)
	}

	// Restore on a second driver sharing the store.
	cfg2 := snapshotConfig(t, storeDir, 3)
	cfg2.Snapshots = cfg1.Snapshots
	d2 := openDriver(t, cfg2)
	t0 = time.Now()
	info, err := d2.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore on a second driver: %v", err)
	}
	t.Logf("restore to envd answering: %v", time.Since(t0).Round(time.Millisecond))
	if !info.MemoryKept || info.State != runtime.StateRunning {
		t.Errorf("restored info = %+v", info)
	}
	t1 := time.Now()
	if out := mustExec(t, d2, "cl-mem", "cat /root/disk-marker /run/m/marker; ls /mnt/fill | wc -l"); out != "on-disk\nin-memory\n50\n" {
		t.Errorf("after restore: %q (want the disk file, the tmpfs file and 50 fill files)", out)
	}
	t.Logf("restore -> first exec: %v", time.Since(t1).Round(time.Millisecond))

	// Touch about 1 % of the guest's memory, pause again: a diff.
	mustExec(t, d2, "cl-mem", "dd if=/dev/urandom of=/mnt/fill/touch bs=1M count=3 2>/dev/null; sync")
	snap2, err := d2.Snapshot(ctx, "cl-mem")
	if err != nil {
		t.Fatalf("second Snapshot: %v", err)
	}
	total2, own2 := imageBytes(t, cfg1.Snapshots, snap2.ID+".mem")
	t.Logf("re-pause after touching 3 MiB (~1 %% of %d MiB): diff stores %.1f MiB (%.2f x touched), image %.1f MiB in all",
		memMB, float64(own2)/mib, float64(own2)/(3*mib), float64(total2)/mib)
	if own2 >= memTotal {
		t.Errorf("the re-pause stored %d MiB, no less than a full image (%d MiB): not a diff", own2/mib, memTotal/mib)
	}
	if _, err := d2.Restore(ctx, snap2); err != nil {
		t.Fatalf("Restore of the diff: %v", err)
	}
	if out := mustExec(t, d2, "cl-mem", "cat /run/m/marker; ls /mnt/fill | wc -l"); out != "in-memory\n51\n" {
		t.Errorf("after restoring the diff: %q", out)
	}
	// The floor: a re-pause after the same exec round trip that touches
	// nothing stores what the guest itself dirties between a restore and
	// a pause (envd serving the exec, the shell and dd paged back in after
	// the balloon evicted them, the balloon's deflate and re-inflate).
	mustExec(t, d2, "cl-mem", "dd if=/dev/urandom of=/dev/null bs=1M count=3 2>/dev/null; sync")
	snap3, err := d2.Snapshot(ctx, "cl-mem")
	if err != nil {
		t.Fatalf("third Snapshot: %v", err)
	}
	_, own3 := imageBytes(t, cfg1.Snapshots, snap3.ID+".mem")
	t.Logf("re-pause after the same exec touching nothing (the guest's own floor): diff stores %.1f MiB; the touched 3 MiB cost %.1f MiB above it (%.2f x touched)",
		float64(own3)/mib, float64(own2-own3)/mib, float64(own2-own3)/(3*mib))
	if _, err := d2.Restore(ctx, snap3); err != nil {
		t.Fatalf("Restore of the third snapshot: %v", err)
	}
}

// TestCorruptMemoryImage: a restore from a damaged RAM image, and one
// whose device state QEMU refuses, fail with a clear error and leave no
// VM, namespace or file; the snapshot stays and restores once intact.
func TestCorruptMemoryImage(t *testing.T) {
	storeDir := t.TempDir()
	cfg := snapshotConfig(t, storeDir, 1)
	var corruptDev bool
	cfg.CreateSteps = func(s *runtime.Steps) {
		if s.Op != vm.OpRestore || !corruptDev {
			return
		}
		_ = s.Wrap("fetch", func(ctx context.Context, next func(context.Context) error) error {
			if err := next(ctx); err != nil {
				return err
			}
			// Garbage where the device state was.
			matches, _ := filepath.Glob(filepath.Join(cfg.StateDir, "capsules", "*", "devstate"))
			for _, m := range matches {
				if err := os.WriteFile(m, []byte("QEVM garbage, not a migration stream"), 0o600); err != nil {
					return err
				}
			}
			return nil
		})
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, 5*time.Minute)
	startCapsule(t, d, runtime.Spec{ID: "cl-bad"})
	snap, err := d.Snapshot(ctx, "cl-bad")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	// Flip bytes in the middle of every data file (the RAM image's too).
	builds, _ := filepath.Glob(filepath.Join(storeDir, "builds", "*"))
	saved := map[string][]byte{}
	for _, b := range builds {
		data, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		saved[b] = data
		bad := append([]byte(nil), data...)
		for i := len(bad) / 3; i < len(bad)/3+64 && i < len(bad); i++ {
			bad[i] ^= 0xff
		}
		if err := os.WriteFile(b, bad, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string) {
		t.Helper()
		_, err := d.Restore(ctx, snap)
		if err == nil {
			t.Fatalf("Restore of %s succeeded", what)
		}
		t.Logf("Restore of %s: %v", what, err)
		if !strings.Contains(err.Error(), "checksum") && !strings.Contains(err.Error(), "device state") {
			t.Errorf("Restore error does not say what is wrong: %v", err)
		}
		got, ierr := d.Inspect(ctx, "cl-bad")
		if ierr != nil || got.State != runtime.StateSnapshotted {
			t.Errorf("after a failed restore: %+v %v, want the capsule still snapshotted", got, ierr)
		}
		if n := vmProcesses(t, cfg.SocketDir); n != 0 {
			t.Errorf("%d VM processes left after a failed restore", n)
		}
		mems, _ := os.ReadDir(cfg.MemDir)
		if len(mems) != 0 {
			t.Errorf("RAM files left: %v", mems)
		}
		ns, _ := d.Network().Namespaces()
		if len(ns) != 0 {
			t.Errorf("namespaces left: %v", ns)
		}
	}
	check("a corrupted image")
	for b, data := range saved {
		if err := os.WriteFile(b, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	corruptDev = true
	check("a device state QEMU cannot load")
	corruptDev = false
	if _, err := d.Restore(ctx, snap); err != nil {
		t.Fatalf("Restore of the intact snapshot after failed ones: %v", err)
	}
}

// vmProcesses counts processes whose command line names a socket in dir.
func vmProcesses(t *testing.T, dir string) int {
	t.Helper()
	procs, _ := os.ReadDir("/proc")
	n := 0
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "unix:"+dir+"/") {
			n++
		}
	}
	return n
}
