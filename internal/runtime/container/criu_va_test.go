package container_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// installMemhog builds testdata/memhog and uploads it into the capsule as
// /usr/local/bin/memhog.
func installMemhog(t testing.TB, d *container.Driver, id string) {
	t.Helper()
	bin, err := buildStatic(t.TempDir(), "./internal/runtime/container/testdata/memhog")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.Long)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Upload(ctx, "/usr/local/bin/memhog", "root", bytes.NewReader(b)); err != nil {
		t.Fatalf("upload memhog: %v", err)
	}
	if out, err := runtimetest.EnvdExec(ctx, info, "root", "chmod", "755", "/usr/local/bin/memhog"); err != nil {
		t.Fatalf("chmod memhog: %v: %s", err, out)
	}
}

// startMemhog runs memhog holding mib MiB in the background (a descendant
// of envd, as a user's process) and waits until it has filled its memory.
func startMemhog(ctx context.Context, t testing.TB, d *container.Driver, id string, mib int) {
	t.Helper()
	installMemhog(t, d, id)
	info, err := d.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	bg := fmt.Sprintf("rm -f /tmp/memhog.pid /tmp/memhog.touched; setsid /usr/local/bin/memhog %d </dev/null >/dev/null 2>&1 &", mib)
	res, err := cl.Exec(ctx, &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", bg}}, envdclient.ExecOptions{Timeout: testutil.Short})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start memhog: %v: %+v", err, res)
	}
	key, err := d.Key(id)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Minute, func() bool {
		_, err := execCmd(ctx, "runc", "--root", d.RuncRoot(), "exec", key, "cat", "/tmp/memhog.pid")
		return err == nil
	}, "memhog filled its memory")
}

// touchMemhog makes memhog rewrite 1 % of its memory (generation gen) and
// returns the bytes it rewrote.
func touchMemhog(ctx context.Context, t testing.TB, d *container.Driver, id string, gen int) int64 {
	t.Helper()
	execIn(ctx, t, d, id, "kill -USR1 $(cat /tmp/memhog.pid)")
	var n int64
	testutil.Eventually(t, 30*time.Second, func() bool {
		out, err := runcExec(ctx, d, id, "cat", "/tmp/memhog.touched")
		if err != nil {
			return false
		}
		for l := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == strconv.Itoa(gen) {
				n, _ = strconv.ParseInt(f[1], 10, 64)
				return true
			}
		}
		return false
	}, "memhog rewrote its pages")
	return n
}

// TestCRIURePauseStoresChanges (issue 21, item 3): CRIU's page images go
// through the snapshot store by virtual address. A capsule holding 128 MiB
// stores them once; resumed, with 1 % of that memory rewritten, its
// re-pause stores about the rewritten pages (plus what envd and the shell
// changed meanwhile), not a second full image, and resumes with the same
// process holding the same memory (it rewrites again after the resume).
func TestCRIURePauseStoresChanges(t *testing.T) {
	d := memTemplateDriver(t, 21)
	ctx := testutil.Context(t, 5*time.Minute)
	const id = "cl-criu-va"
	startCapsule(t, d, runtime.Spec{ID: id, MemoryMB: 512})
	startMemhog(ctx, t, d, id, 128)
	pid := execIn(ctx, t, d, id, "cat /tmp/memhog.pid")

	snap1, err := d.Snapshot(ctx, id)
	if err != nil || !snap1.MemoryKept {
		t.Fatalf("Snapshot: %+v, %v", snap1, err)
	}
	h1 := readHeader(ctx, t, d.SnapshotManager(), snap1.Keys[1])
	if h1.Metadata[snapshot.MetaCRIULayout] != snapshot.CRIULayoutVA {
		t.Fatalf("memory image layout %q, want %q", h1.Metadata[snapshot.MetaCRIULayout], snapshot.CRIULayoutVA)
	}
	stored1 := ownStored(h1)
	if stored1 < 128<<20 {
		t.Fatalf("first pause stored %d bytes, less than memhog's 128 MiB", stored1)
	}
	info, err := d.Restore(ctx, snap1)
	if err != nil || !info.MemoryKept {
		t.Fatalf("Restore: %+v, %v", info, err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	touched := touchMemhog(ctx, t, d, id, 1)

	snap2, err := d.Snapshot(ctx, id)
	if err != nil || !snap2.MemoryKept {
		t.Fatalf("second Snapshot: %+v, %v", snap2, err)
	}
	// The dumps went through the scratch tmpfs (this host has /dev/shm)
	// and nothing of them is left there.
	scratch := d.CRIUScratchDir()
	if !strings.HasPrefix(scratch, "/dev/shm/wrenn-criu-") {
		t.Errorf("CRIU scratch directory %q, want one on /dev/shm", scratch)
	} else if ents, err := os.ReadDir(scratch); err != nil || len(ents) != 0 {
		t.Errorf("scratch directory after two pauses: %v entries, %v", len(ents), err)
	}
	h2 := readHeader(ctx, t, d.SnapshotManager(), snap2.Keys[1])
	stored2 := ownStored(h2)
	t.Logf("first pause stored %d bytes; after rewriting %d bytes the re-pause stored %d (%.2f× the rewritten memory; generation %d, %d builds)",
		stored1, touched, stored2, float64(stored2)/float64(touched), h2.Generation, len(h2.Builds))
	// envd (Go) and the shell change a little memory of their own between
	// the pauses: allowed on top of 1.1 × memhog's pages.
	if limit := touched*11/10 + 4<<20; stored2 > limit {
		t.Errorf("re-pause stored %d bytes for %d rewritten (limit %d)", stored2, touched, limit)
	}
	info, err = d.Restore(ctx, snap2)
	if err != nil || !info.MemoryKept {
		t.Fatalf("second Restore: %+v, %v", info, err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if got := execIn(ctx, t, d, id, "echo $(cat /tmp/memhog.pid); kill -0 $(cat /tmp/memhog.pid) && echo alive"); got != pid+"\nalive" {
		t.Fatalf("memhog after the second restore: %q, want pid %s alive", got, pid)
	}
	if n := touchMemhog(ctx, t, d, id, 2); n != touched {
		t.Errorf("memhog rewrote %d bytes after the restore, want %d", n, touched)
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	assertClean(t, d)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("scratch directory %s still there after Close (%v)", scratch, err)
	}
}

// diskWriteRate writes size bytes to a new file in dir in 1 MiB writes and
// fsyncs it: the disk's sequential write rate in bytes per second.
func diskWriteRate(tb testing.TB, dir string, size int64) float64 {
	tb.Helper()
	f, err := os.CreateTemp(dir, "wrenn-ddtest-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(f.Name())
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	start := time.Now()
	for done := int64(0); done < size; done += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return float64(size) / time.Since(start).Seconds()
}

// memoryFloors measures, in this process, what moving mib MiB of memory
// costs on this host at least: a memcpy between faulted buffers, faulting
// fresh anonymous memory in page by page (what a restore's page faults
// cost), and writing it to the scratch tmpfs. In MiB/s.
func memoryFloors(tb testing.TB, mib int) (memcpy, fault, tmpfs float64) {
	tb.Helper()
	n := mib << 20
	src := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		src[i] = byte(i/4096 + 1)
	}
	dst := make([]byte, n)
	copy(dst, src) // faulted in
	t0 := time.Now()
	copy(dst, src)
	memcpy = float64(mib) / time.Since(t0).Seconds()
	fresh, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		tb.Fatal(err)
	}
	t0 = time.Now()
	for i := 0; i < n; i += 4096 {
		fresh[i] = 1
	}
	fault = float64(mib) / time.Since(t0).Seconds()
	_ = unix.Munmap(fresh)
	f, err := os.CreateTemp("/dev/shm", "wrenn-floor-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(f.Name())
	t0 = time.Now()
	if _, err := f.Write(src); err != nil {
		tb.Fatal(err)
	}
	tmpfs = float64(mib) / time.Since(t0).Seconds()
	_ = f.Close()
	return memcpy, fault, tmpfs
}

// BenchmarkCRIUPauseVA measures pause to disk (Snapshot: CRIU dump, disk
// and memory published by virtual address) and resume → first exec of a
// capsule whose memhog holds 256 MiB, 1 GiB and 2 GiB: a first (full)
// pause, and a re-pause after 1 % of the memory was rewritten (stored as
// a diff), each followed by a resume. Two capsules per size, one after the
// other: pages dumped to files on the scratch tmpfs and read back by the
// store (SetCRIUPageServer("off")), and pages streamed into the store while
// CRIU dumps them (CRIU's page-server protocol, "on"). pause-ms,
// repause-ms and resume-first-exec-ms are the files path's figures, the
// default below 1.5 GiB of memory use; stream-pause-ms is the default's
// at 2 GiB. Same-run
// floors: the disk's sequential write rate (1 MiB writes + fsync into the
// store's directory), a memcpy, faulting in fresh memory page by page
// (what a restore's page faults cost), writing to tmpfs. Needs
// WRENN_TEST_CRIU. The driver logs where each pause and resume spends its
// time (CRIU's stats: freezing, frozen, memdump, memwrite; restore; image
// fetch; store processing and publish). Run it with -benchtime 1x: in
// later rounds the "first" pause diffs against the round before.
func BenchmarkCRIUPauseVA(b *testing.B) {
	for _, mib := range []int{256, 1024, 2048} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			cfg := criuConfig(b)
			cfg.Network.Subnet = netipPrefix(7)
			cfg.DefaultDiskSizeMB = 256
			cfg.CRIUTimeout = 5 * time.Minute
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			d := openDriver(b, cfg)
			ctx := testutil.Context(b, 30*time.Minute)
			rate := diskWriteRate(b, filepath.Join(cfg.StateDir), 512<<20)
			memcpy, fault, tmpfs := memoryFloors(b, mib)
			type result struct {
				pause, resume, repause, reresume time.Duration
				stored, touched                  int64
			}
			timed := func(id string) (pause, resume time.Duration, snap runtime.SnapshotInfo) {
				t0 := time.Now()
				snap, err := d.Snapshot(ctx, id)
				if err != nil || !snap.MemoryKept {
					b.Fatalf("Snapshot: %+v, %v", snap, err)
				}
				pause = time.Since(t0)
				t0 = time.Now()
				info, err := d.Restore(ctx, snap)
				if err != nil || !info.MemoryKept {
					b.Fatalf("Restore: %+v, %v", info, err)
				}
				if out, err := runtimetest.EnvdExec(ctx, info, "root", "true"); err != nil {
					b.Fatalf("first exec: %v: %s", err, out)
				}
				return pause, time.Since(t0), snap
			}
			run := func(mode, name string) result {
				d.SetCRIUPageServer(mode)
				defer d.SetCRIUPageServer("")
				id := fmt.Sprintf("cl-bench-va-%d-%s", mib, name)
				startCapsule(b, d, runtime.Spec{ID: id, MemoryMB: mib + 512})
				startMemhog(ctx, b, d, id, mib)
				var r result
				for i := 0; i < b.N; i++ {
					p, rs, _ := timed(id)
					r.pause, r.resume = r.pause+p, r.resume+rs
					r.touched = touchMemhog(ctx, b, d, id, i+1)
					p, rs, snap := timed(id)
					r.repause, r.reresume = r.repause+p, r.reresume+rs
					r.stored = ownStored(readHeader(ctx, b, d.SnapshotManager(), snap.Keys[1]))
				}
				if err := d.Destroy(ctx, id); err != nil {
					b.Fatal(err)
				}
				return r
			}
			b.ResetTimer()
			files := run("off", "files")
			streamed := run("on", "stream")
			n := float64(b.N)
			per := func(d time.Duration) float64 { return ms(d) / n }
			mbps := float64(mib) / (files.pause.Seconds() / n)
			b.ReportMetric(mbps, "pause-MiB/s")
			b.ReportMetric(rate/(1<<20), "disk-write-MiB/s")
			b.ReportMetric(mbps/(rate/(1<<20)), "pause/disk")
			b.ReportMetric(per(files.pause), "pause-ms")
			b.ReportMetric(per(files.repause), "repause-ms")
			b.ReportMetric(per(files.resume), "resume-first-exec-ms")
			b.ReportMetric(float64(files.stored)/float64(files.touched), "repause-stored/touched")
			b.ReportMetric(per(streamed.pause), "stream-pause-ms")
			b.ReportMetric(per(streamed.repause), "stream-repause-ms")
			b.ReportMetric(per(streamed.resume), "stream-resume-first-exec-ms")
			b.ReportMetric(memcpy, "memcpy-MiB/s")
			b.ReportMetric(fault, "fault-in-MiB/s")
			b.ReportMetric(tmpfs, "tmpfs-write-MiB/s")
			b.Logf("%d MiB: full pause to files %.0f ms (%.0f MiB/s) / streamed %.0f ms; re-pause to files %.0f ms / streamed %.0f ms (stored %d bytes for %d rewritten); "+
				"resume → first exec %.0f / %.0f ms (files / streamed run), after the re-pause %.0f / %.0f ms; floors: disk write+fsync %.0f MiB/s, memcpy %.0f MiB/s, fault-in %.0f MiB/s, tmpfs write %.0f MiB/s",
				mib, per(files.pause), mbps, per(streamed.pause), per(files.repause), per(streamed.repause), files.stored, files.touched,
				per(files.resume), per(streamed.resume), per(files.reresume), per(streamed.reresume), rate/(1<<20), memcpy, fault, tmpfs)
		})
	}
}

// netipPrefix is 10.<octet>.0.0/16 (10.20-10.29: this file's and
// memtemplate_test.go's tests).
func netipPrefix(octet int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", octet))
}
