package container_test

import (
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkCRIUPauseToDisk measures pause-to-disk (Snapshot) and resume
// (Restore until envd answers) of an idle capsule with memory kept through
// CRIU, next to the files-only path (stop, publish the disk, boot again) of
// the same capsule on a driver with CRIU off, timed in the same run. It
// reports both latencies, their ratios and the stored bytes of the memory
// image. Needs WRENN_TEST_CRIU like the CRIU tests.
func BenchmarkCRIUPauseToDisk(b *testing.B) {
	withCRIU := criuDriver(b)
	cfg := criuConfig(b)
	cfg.DisableCRIU = true
	filesOnly := openDriver(b, cfg)
	ctx := testutil.Context(b, 30*time.Minute)
	startCapsule(b, withCRIU, runtime.Spec{ID: "cl-bench-criu"})
	startCapsule(b, filesOnly, runtime.Spec{ID: "cl-bench-files"})

	cycle := func(d *container.Driver, id string, wantMemory bool) (snapT, restoreT time.Duration, memStored int64) {
		t0 := time.Now()
		snap, err := d.Snapshot(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		snapT = time.Since(t0)
		if snap.MemoryKept != wantMemory {
			b.Fatalf("%s: MemoryKept = %v, want %v", id, snap.MemoryKept, wantMemory)
		}
		if wantMemory {
			memStored = totalStored(readHeader(ctx, b, d.SnapshotManager(), snap.Keys[1]))
		}
		t0 = time.Now()
		info, err := d.Restore(ctx, snap)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			b.Fatal(err)
		}
		restoreT = time.Since(t0)
		if info.MemoryKept != wantMemory {
			b.Fatalf("%s: restored MemoryKept = %v, want %v", id, info.MemoryKept, wantMemory)
		}
		return snapT, restoreT, memStored
	}
	var cSnap, cRestore, fSnap, fRestore time.Duration
	var stored int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, r, m := cycle(withCRIU, "cl-bench-criu", true)
		cSnap, cRestore, stored = cSnap+s, cRestore+r, m
		b.StopTimer()
		s, r, _ = cycle(filesOnly, "cl-bench-files", false)
		fSnap, fRestore = fSnap+s, fRestore+r
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(ms(cSnap)/n, "criu-snapshot-ms")
	b.ReportMetric(ms(cRestore)/n, "criu-restore-ms")
	b.ReportMetric(ms(fSnap)/n, "files-snapshot-ms")
	b.ReportMetric(ms(fRestore)/n, "files-restore-ms")
	b.ReportMetric(float64(cSnap)/float64(fSnap), "snapshot-criu/files")
	b.ReportMetric(float64(cRestore)/float64(fRestore), "restore-criu/files")
	b.ReportMetric(float64(stored), "memory-stored-bytes")
	b.Logf("idle capsule: CRIU snapshot %.0f ms, restore %.0f ms (memory image %d bytes stored); files only: snapshot %.0f ms, restore+boot %.0f ms",
		ms(cSnap)/n, ms(cRestore)/n, stored, ms(fSnap)/n, ms(fRestore)/n)
}
