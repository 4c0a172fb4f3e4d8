package container_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

const mib = 1 << 20

// localManager returns a snapshot manager over a local store in dir.
func localManager(t testing.TB, dir string) (*snapshot.Manager, *store.Local) {
	t.Helper()
	st, err := store.OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &snapshot.Manager{Store: st, TempDir: t.TempDir()}, st
}

// corruptBuilds flips bytes in the first block of every build the snapshot
// called name references.
func corruptBuilds(ctx context.Context, t testing.TB, m *snapshot.Manager, local *store.Local, name string) {
	t.Helper()
	h, err := snapshot.ReadHeader(ctx, m.Store, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range h.Builds {
		f, err := os.OpenFile(local.DataPath(b.ID.String()), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("this block is damaged"), 100); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// exec runs a shell command in a capsule and fails the test on error.
func execIn(ctx context.Context, t testing.TB, d *container.Driver, id, script string) string {
	t.Helper()
	out, err := runcExec(ctx, d, id, "sh", "-c", script)
	if err != nil {
		t.Fatalf("exec %q in %s: %v: %s", script, id, err, out)
	}
	return strings.TrimSpace(out)
}

// ownStored is the data the snapshot's own build added to the store.
func ownStored(h *snapshot.Header) int64 {
	b, _ := h.Build(h.BuildID)
	return b.DataLen
}

// totalStored is the data of every build the snapshot references.
func totalStored(h *snapshot.Header) int64 {
	var n int64
	for _, b := range h.Builds {
		n += b.DataLen
	}
	return n
}

func readHeader(ctx context.Context, t testing.TB, m *snapshot.Manager, name string) *snapshot.Header {
	t.Helper()
	h, err := snapshot.ReadHeader(ctx, m.Store, name)
	if err != nil {
		t.Fatalf("header %s: %v", name, err)
	}
	return h
}

func diskImage(t testing.TB, d *container.Driver, stateDir, id string) string {
	t.Helper()
	key, err := d.Key(id)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(stateDir, "capsules", key, "disk.img")
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestSnapshotStoresWrittenBytes: a capsule that wrote N MiB on a 5 GiB
// disk stores about N MiB plus ext4 metadata; the local image is gone after
// the snapshot; the restored image is sparse again and holds the data.
func TestSnapshotStoresWrittenBytes(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	writeMiB := 100
	if testing.Short() {
		writeMiB = 16
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	mgr, _ := localManager(t, filepath.Join(dir, "snaps"))
	cfg.Snapshots = mgr
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, 5*time.Minute)
	startCapsule(t, d, runtime.Spec{ID: "cl-size", DiskSizeMB: 5120})
	execIn(ctx, t, d, "cl-size", fmt.Sprintf("dd if=/dev/urandom of=/root/blob bs=1M count=%d 2>/dev/null && rm /etc/group", writeMiB))
	sum := execIn(ctx, t, d, "cl-size", "md5sum /root/blob")
	image := diskImage(t, d, dir, "cl-size")

	start := time.Now()
	snap, err := d.Snapshot(ctx, "cl-size")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if _, err := os.Stat(image); !os.IsNotExist(err) {
		t.Errorf("local disk image still exists after the snapshot (stat err %v)", err)
	}
	h := readHeader(ctx, t, mgr, snap.Keys[0])
	stored := totalStored(h)
	written := int64(writeMiB) * mib
	t.Logf("pause-to-disk: capsule wrote %d MiB on a %d MiB disk: snapshot took %v, stored %d bytes (%.2f MiB, %.3f× the written data)",
		writeMiB, h.Size/mib, took.Round(time.Millisecond), stored, float64(stored)/mib, float64(stored)/float64(written))
	if h.Size != 5120*mib {
		t.Errorf("image size = %d, want 5 GiB", h.Size)
	}
	if limit := written + 24*mib; stored < written || stored > limit {
		t.Errorf("stored %d bytes, want between %d and %d", stored, written, limit)
	}
	if got := h.Metadata["wrenn.template_id"]; got != tmplName {
		t.Errorf("metadata template = %q, want %q", got, tmplName)
	}
	if got := h.Metadata["wrenn.capsule_id"]; got != "cl-size" {
		t.Errorf("metadata capsule = %q", got)
	}
	assertClean(t, d)

	info, err := d.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if info.DiskSizeMB != 5120 || info.MemoryKept {
		t.Errorf("restored info = %+v", info)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if got := execIn(ctx, t, d, "cl-size", "md5sum /root/blob"); got != sum {
		t.Errorf("blob after restore: %q, want %q", got, sum)
	}
	if out, err := runcExec(ctx, d, "cl-size", "test", "-e", "/etc/group"); err == nil {
		t.Errorf("deleted file came back after restore: %s", out)
	}
	// Holes stay holes: the materialised image occupies what was stored.
	alloc := allocated(t, diskImage(t, d, dir, "cl-size"))
	t.Logf("restored image: %d bytes allocated for %d stored", alloc, stored)
	if alloc > stored+4*mib {
		t.Errorf("restored image allocates %d bytes, stored %d: holes were filled", alloc, stored)
	}
}

// TestSnapshotDiffGenerations: with MaxDiffGenerations=2 a re-pause after
// a small change stores a small diff over its parent, the next one is
// merged; with the default (1) every re-pause is merged. Every generation
// restores correctly, the superseded headers are deleted and GC leaves only
// live builds.
func TestSnapshotDiffGenerations(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	for _, tc := range []struct {
		name    string
		maxGen  int
		chains  []int // builds referenced after each pause
		diffMax int64 // bound on the own build of a diff pause
	}{
		{name: "diff-then-merge", maxGen: 2, chains: []int{1, 2, 1}, diffMax: 2 * mib},
		{name: "merge-every-time", maxGen: 0, chains: []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			mgr, _ := localManager(t, filepath.Join(dir, "snaps"))
			mgr.MaxDiffGenerations = tc.maxGen
			cfg.Snapshots = mgr
			d := openDriver(t, cfg)
			ctx := testutil.Context(t, 5*time.Minute)
			startCapsule(t, d, runtime.Spec{ID: "cl-gen", DiskSizeMB: 512})
			execIn(ctx, t, d, "cl-gen", "dd if=/dev/urandom of=/root/base bs=1M count=8 2>/dev/null")
			var names []string
			for gen, wantChain := range tc.chains {
				execIn(ctx, t, d, "cl-gen", fmt.Sprintf("echo gen%d > /root/gen%d && echo gen%d > /root/last", gen, gen, gen))
				base := execIn(ctx, t, d, "cl-gen", "md5sum /root/base")
				snap, err := d.Snapshot(ctx, "cl-gen")
				if err != nil {
					t.Fatalf("Snapshot %d: %v", gen, err)
				}
				names = append(names, snap.Keys[0])
				h := readHeader(ctx, t, mgr, snap.Keys[0])
				t.Logf("pause %d: generation %d, chain %d, own build %d bytes, total %d bytes", gen, h.Generation, len(h.Builds), ownStored(h), totalStored(h))
				if len(h.Builds) != wantChain {
					t.Errorf("pause %d: chain of %d builds, want %d", gen, len(h.Builds), wantChain)
				}
				if h.Generation != uint64(gen) {
					t.Errorf("pause %d: generation %d, want %d", gen, h.Generation, gen)
				}
				if wantChain > 1 && ownStored(h) > tc.diffMax {
					t.Errorf("pause %d: diff stored %d bytes, want ≤ %d", gen, ownStored(h), tc.diffMax)
				}
				if gen > 0 {
					if _, err := mgr.Store.GetHeader(ctx, names[gen-1]); err == nil {
						t.Errorf("superseded snapshot %s still in the store", names[gen-1])
					}
				}
				info, err := d.Restore(ctx, snap)
				if err != nil {
					t.Fatalf("Restore %d: %v", gen, err)
				}
				if err := d.WaitReady(ctx, info); err != nil {
					t.Fatal(err)
				}
				got := execIn(ctx, t, d, "cl-gen", "cat /root/last; for i in $(seq 0 "+fmt.Sprint(gen)+"); do cat /root/gen$i; done; md5sum /root/base")
				want := fmt.Sprintf("gen%d\n", gen)
				for i := 0; i <= gen; i++ {
					want += fmt.Sprintf("gen%d\n", i)
				}
				want += base
				if got != want {
					t.Errorf("after restore %d: got %q, want %q", gen, got, want)
				}
			}
			// GC keeps exactly the builds the live header references.
			if _, err := mgr.GC(ctx, 0); err != nil {
				t.Fatal(err)
			}
			objs, err := mgr.Store.ListData(ctx)
			if err != nil {
				t.Fatal(err)
			}
			last := readHeader(ctx, t, mgr, names[len(names)-1])
			if len(objs) != len(last.Builds) {
				t.Errorf("after GC: %d data objects, want the %d the live snapshot references", len(objs), len(last.Builds))
			}
			// Destroying the capsule drops its snapshot lineage.
			if err := d.Destroy(ctx, "cl-gen"); err != nil {
				t.Fatal(err)
			}
			if hs, err := mgr.Store.ListHeaders(ctx); err != nil || len(hs) != 0 {
				t.Errorf("headers after destroy: %v (err %v), want none", hs, err)
			}
		})
	}
}

// TestSnapshotRestoreOnOtherHost: a capsule snapshotted by driver A resumes
// on driver B (its own state dir, cgroups and network) from the same store,
// local or S3, and B can pause it again (diffing against A's image).
func TestSnapshotRestoreOnOtherHost(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	for _, tc := range []struct {
		name string
		open func(t *testing.T, dir string) store.Store
	}{
		{name: "local", open: func(t *testing.T, dir string) store.Store {
			_, st := localManager(t, filepath.Join(dir, "shared"))
			return st
		}},
		{name: "s3", open: func(t *testing.T, _ string) store.Store {
			st, err := store.NewS3(s3test.Start(t))
			if err != nil {
				t.Fatal(err)
			}
			return st
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			shared := tc.open(t, root)
			newHost := func(name string) (*container.Driver, *snapshot.Manager) {
				cfg := testConfig(t, filepath.Join(root, name))
				m := &snapshot.Manager{Store: shared, TempDir: t.TempDir()}
				cfg.Snapshots = m
				return openDriver(t, cfg), m
			}
			a, _ := newHost("host-a")
			b, mb := newHost("host-b")
			ctx := testutil.Context(t, 5*time.Minute)
			startCapsule(t, a, runtime.Spec{ID: "cl-move", Env: map[string]string{"K": "v"}})
			execIn(ctx, t, a, "cl-move", "echo moved > /root/file && dd if=/dev/urandom of=/root/blob bs=1M count=4 2>/dev/null && rm /etc/group")
			sum := execIn(ctx, t, a, "cl-move", "md5sum /root/blob")
			snap, err := a.Snapshot(ctx, "cl-move")
			if err != nil {
				t.Fatalf("Snapshot on A: %v", err)
			}
			assertClean(t, a)
			info, err := b.Restore(ctx, snap)
			if err != nil {
				t.Fatalf("Restore on B: %v", err)
			}
			if err := b.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			got := execIn(ctx, t, b, "cl-move", "cat /root/file; md5sum /root/blob; test -e /etc/group && echo group-back || true")
			if want := "moved\n" + sum; got != want {
				t.Errorf("on B: %q, want %q", got, want)
			}
			execIn(ctx, t, b, "cl-move", "echo again > /root/file2")
			snap2, err := b.Snapshot(ctx, "cl-move")
			if err != nil {
				t.Fatalf("re-Snapshot on B: %v", err)
			}
			h := readHeader(ctx, t, mb, snap2.Keys[0])
			if h.Generation != 1 {
				t.Errorf("re-pause on B: generation %d, want 1 (a diff over A's image)", h.Generation)
			}
			assertClean(t, b)
			// A bare info (IDs only) is enough: the image describes itself.
			bare := runtime.SnapshotInfo{ID: snap2.ID, CapsuleID: snap2.CapsuleID, Keys: snap2.Keys}
			if err := a.Destroy(ctx, "cl-move"); err != nil {
				t.Fatal(err)
			}
			info, err = a.Restore(ctx, bare)
			if err != nil {
				t.Fatalf("Restore of a bare info on A: %v", err)
			}
			if info.Template != tmplName {
				t.Errorf("template from metadata = %q, want %q", info.Template, tmplName)
			}
			if err := a.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			if got := execIn(ctx, t, a, "cl-move", "cat /root/file /root/file2"); got != "moved\nagain" {
				t.Errorf("back on A: %q", got)
			}
		})
	}
}

// TestRestoreRejectsForeignImage: an info naming another capsule's image
// fails before any host object is made.
func TestRestoreRejectsForeignImage(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	mgr, _ := localManager(t, filepath.Join(dir, "snaps"))
	cfg.Snapshots = mgr
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-own"})
	snap, err := d.Snapshot(ctx, "cl-own")
	if err != nil {
		t.Fatal(err)
	}
	bad := snap
	bad.CapsuleID = "cl-other"
	if _, err := d.Restore(ctx, bad); err == nil {
		t.Fatal("Restore of another capsule's image succeeded")
	}
	if _, err := d.Inspect(ctx, "cl-other"); err == nil {
		t.Error("a capsule is left after the rejected restore")
	}
	assertClean(t, d)
}

// cancelStore is a real store whose data reads cancel a context the first
// time a build's first block is read: a restore is cancelled in the middle
// of materialising the image, after the snapshot was opened.
type cancelStore struct {
	store.Store
	cancel atomic.Pointer[context.CancelFunc]
}

func (s *cancelStore) OpenData(ctx context.Context, id string) (store.Blob, error) {
	b, err := s.Store.OpenData(ctx, id)
	if err != nil {
		return nil, err
	}
	return cancelBlob{Blob: b, s: s}, nil
}

type cancelBlob struct {
	store.Blob
	s *cancelStore
}

func (b cancelBlob) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		if c := b.s.cancel.Swap(nil); c != nil {
			(*c)()
		}
	}
	return b.Blob.ReadAt(p, off)
}

// TestCancelledRestoreLeavesNothing: a restore cancelled while the image is
// being materialised fails and leaves no capsule, mount, loop device, netns
// or cgroup; the snapshot itself stays restorable.
func TestCancelledRestoreLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	_, local := localManager(t, filepath.Join(dir, "snaps"))
	cs := &cancelStore{Store: local}
	cfg.Snapshots = &snapshot.Manager{Store: cs, TempDir: t.TempDir()}
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-cancel"})
	execIn(ctx, t, d, "cl-cancel", "echo still > /root/here")
	snap, err := d.Snapshot(ctx, "cl-cancel")
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs.cancel.Store(&cancel)
	_, err = d.Restore(rctx, snap)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "materialise") {
		t.Fatalf("cancelled Restore: err = %v, want context.Canceled while materialising", err)
	}
	if _, err := d.Inspect(ctx, "cl-cancel"); err == nil {
		t.Error("a capsule is left after the cancelled restore")
	}
	assertClean(t, d)
	entries, err := os.ReadDir(filepath.Join(dir, "capsules"))
	if err != nil || len(entries) != 0 {
		t.Errorf("capsule directories left: %v (err %v)", entries, err)
	}
	info, err := d.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore after the cancelled one: %v", err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if got := execIn(ctx, t, d, "cl-cancel", "cat /root/here"); got != "still" {
		t.Errorf("after restore: %q", got)
	}
}

// BenchmarkPauseToDisk measures Snapshot (stop, unmount, publish the ext4
// image, release) of a capsule that wrote 100 MiB (16 MiB with -short) on a
// 5 GiB disk, and Restore of it, next to a plain sparse copy of the same
// image (rootfs.CopySparse, the least work any disk snapshot must do) timed
// in the same run. It reports the stored bytes and the ratios
// stored/written and snapshot/sparse-copy time.
func BenchmarkPauseToDisk(b *testing.B) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatalf("test setup: %v", setupErr)
	}
	writeMiB := 100
	if testing.Short() {
		writeMiB = 16
	}
	dir := b.TempDir()
	cfg := testConfig(b, dir)
	mgr, _ := localManager(b, filepath.Join(dir, "snaps"))
	cfg.Snapshots = mgr
	d := openDriver(b, cfg)
	ctx := testutil.Context(b, 30*time.Minute)
	startCapsule(b, d, runtime.Spec{ID: "cl-bench", DiskSizeMB: 5120})
	execIn(ctx, b, d, "cl-bench", fmt.Sprintf("dd if=/dev/urandom of=/root/blob bs=1M count=%d 2>/dev/null && sync", writeMiB))
	var snapT, restoreT, copyT time.Duration
	var stored int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// Baseline: a sparse copy of the same image.
		cp := filepath.Join(b.TempDir(), "copy.img")
		t0 := time.Now()
		if err := rootfs.CopySparse(diskImage(b, d, dir, "cl-bench"), cp); err != nil {
			b.Fatal(err)
		}
		copyT += time.Since(t0)
		if err := os.Remove(cp); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 = time.Now()
		snap, err := d.Snapshot(ctx, "cl-bench")
		if err != nil {
			b.Fatal(err)
		}
		snapT += time.Since(t0)
		b.StopTimer()
		stored = totalStored(readHeader(ctx, b, mgr, snap.Keys[0]))
		t0 = time.Now()
		info, err := d.Restore(ctx, snap)
		if err != nil {
			b.Fatal(err)
		}
		restoreT += time.Since(t0)
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(ms(snapT)/n, "snapshot-ms")
	b.ReportMetric(ms(restoreT)/n, "restore-ms")
	b.ReportMetric(ms(copyT)/n, "sparse-copy-ms")
	b.ReportMetric(float64(snapT)/float64(copyT), "snapshot/sparse-copy")
	b.ReportMetric(float64(stored)/mib, "stored-MiB")
	b.ReportMetric(float64(stored)/float64(int64(writeMiB)*mib), "stored/written")
	b.Logf("pause-to-disk of a capsule that wrote %d MiB on a 5 GiB disk: snapshot %.0f ms, restore %.0f ms, sparse copy %.0f ms, stored %d bytes",
		writeMiB, ms(snapT)/n, ms(restoreT)/n, ms(copyT)/n, stored)
}
