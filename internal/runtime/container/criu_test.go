package container_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// criuConfig returns a driver config with memory snapshots, or skips the
// test. The criu binary comes from WRENN_TEST_CRIU (e.g. the path
// scripts/criu.sh prints) and extra criu environment from
// WRENN_TEST_CRIU_ENV (space-separated, e.g. "CRIU_FAULT=130").
func criuConfig(t testing.TB) container.Config {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	path := os.Getenv("WRENN_TEST_CRIU")
	if path == "" {
		t.Skip("memory snapshots: set WRENN_TEST_CRIU to a working criu (WRENN_TEST_CRIU=$(scripts/criu.sh))")
	}
	cfg := testConfig(t, t.TempDir())
	cfg.CRIUPath = path
	cfg.CRIUEnv = strings.Fields(os.Getenv("WRENN_TEST_CRIU_ENV"))
	cfg.CRIUTimeout = 10 * time.Second
	return cfg
}

// A CRIU without the join-ns user patch (stock CRIU: `criu check --feature
// join_userns_root` fails) is not used while user namespaces are on: it
// would dump capsules but restore none (docs/CRIU.md). Memory snapshots
// are reported off with the reason, and pause to disk keeps files instead
// of paying for a dump that cannot be restored. Without user namespaces
// the same binary is used.
func TestCRIUOffWithUserNSWithoutPatch(t *testing.T) {
	cfg := criuConfig(t)
	// Stock CRIU as far as the driver can tell: the patched binary, minus
	// the feature the patch adds.
	stock := filepath.Join(t.TempDir(), "criu")
	script := "#!/bin/sh\nif [ \"$*\" = \"check --feature join_userns_root\" ]; then echo \"Error: Unknown feature join_userns_root\" >&2; exit 1; fi\nexec " + cfg.CRIUPath + " \"$@\"\n"
	if err := os.WriteFile(stock, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.CRIUPath = stock
	d := openDriver(t, cfg)
	if d.CRIUAvailable() || d.MemorySnapshots() {
		t.Fatal("memory snapshots on with user namespaces and a CRIU that cannot restore into them")
	}
	if r := d.CRIUUnavailableReason(); !strings.Contains(r, "user namespace") {
		t.Errorf("reason = %q, want it to name user namespaces", r)
	}
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-criu-userns"})
	snap, err := d.Snapshot(ctx, "cl-criu-userns")
	if err != nil || snap.MemoryKept {
		t.Fatalf("Snapshot: %+v, %v; want files only", snap, err)
	}

	plain := criuConfig(t)
	plain.CRIUPath = stock
	plain.DisableUserNS = true
	if d := openDriver(t, plain); !d.MemorySnapshots() {
		t.Errorf("memory snapshots off without user namespaces: %s", d.CRIUUnavailableReason())
	}
}

// criuDriver opens a driver on criuConfig. Once WRENN_TEST_CRIU is set,
// criu must work.
func criuDriver(t testing.TB) *container.Driver {
	t.Helper()
	cfg := criuConfig(t)
	d := openDriver(t, cfg)
	if !d.CRIUAvailable() || !d.MemorySnapshots() {
		t.Fatalf("WRENN_TEST_CRIU=%s is set but `criu check` fails with it (env %q)", cfg.CRIUPath, cfg.CRIUEnv)
	}
	return d
}

// counterScript counts in a shell variable (memory only) and writes each
// value and its own PID to files. Only a memory restore keeps it going
// from where it was: a booted capsule has no such process.
const counterScript = `echo $$ > /tmp/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done`

// startCounter starts the counter in the background through envd (as a
// user's process runs: a descendant of envd, the capsule's init, which is
// the tree CRIU dumps) and waits until it has counted a little.
func startCounter(ctx context.Context, t *testing.T, d *container.Driver, info runtime.Info) {
	t.Helper()
	cl, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	bg := "setsid sh -c '" + counterScript + "' </dev/null >/dev/null 2>&1 &"
	res, err := cl.Exec(ctx, &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", bg}}, envdclient.ExecOptions{Timeout: testutil.Short})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start counter through envd: %v: %+v", err, res)
	}
	testutil.Eventually(t, testutil.Short, func() bool { return readCounter(ctx, t, d, info.ID) >= 3 }, "counter running")
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func readCounter(ctx context.Context, t *testing.T, d *container.Driver, id string) int {
	t.Helper()
	// `runc exec`, not envd: a read must not leave a connection to envd
	// (or a process in its tree) for the next checkpoint to deal with.
	key, err := d.Key(id)
	if err != nil {
		return 0
	}
	out, err := execCmd(ctx, "runc", "--root", d.RuncRoot(), "exec", key, "cat", "/tmp/counter")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

func TestCRIUMemorySurvivesPauseToDisk(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frozen bool // warm-paused before the snapshot
	}{
		{"running", false},
		{"warm-paused", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := criuDriver(t)
			ctx := testutil.Context(t, testutil.Long)
			id := "cl-criu-" + tc.name
			info := startCapsule(t, d, runtime.Spec{ID: id})
			execIn(ctx, t, d, id, "echo kept > /root/file")
			startCounter(ctx, t, d, info)
			pid := execIn(ctx, t, d, id, "cat /tmp/counter.pid")
			if tc.frozen {
				if err := d.Pause(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			before := readCounter(ctx, t, d, id)
			snap, err := d.Snapshot(ctx, id)
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			if !snap.MemoryKept || len(snap.Keys) != 2 {
				t.Fatalf("snapshot = %+v, want memory kept in a second key", snap)
			}
			info, err = d.Restore(ctx, snap)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if !info.MemoryKept || info.State != runtime.StateRunning {
				t.Fatalf("restored = %+v, want running with memory kept", info)
			}
			if err := d.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			after := readCounter(ctx, t, d, id)
			if after < before {
				t.Errorf("counter after restore = %d, want >= %d (it restarted)", after, before)
			}
			if !waitFor(testutil.Short, func() bool { return readCounter(ctx, t, d, id) > after }) {
				out, _ := runcExec(ctx, d, id, "ps", "-o", "pid,stat,args")
				t.Fatalf("counter stuck at %d after restore (was %d before); processes:\n%s", readCounter(ctx, t, d, id), before, out)
			}
			if got := execIn(ctx, t, d, id, "cat /tmp/counter.pid"); got != pid {
				t.Errorf("counter pid = %s, want %s", got, pid)
			}
			execIn(ctx, t, d, id, "kill -0 "+pid)
			if got := execIn(ctx, t, d, id, "cat /root/file"); got != "kept" {
				t.Errorf("file after restore = %q", got)
			}
			// The restored capsule pauses to disk again (a second
			// generation supersedes the first, memory image included).
			snap2, err := d.Snapshot(ctx, id)
			if err != nil || !snap2.MemoryKept {
				t.Fatalf("second Snapshot: %+v, %v", snap2, err)
			}
			if _, err := d.SnapshotManager().Open(ctx, snap.Keys[1]); err == nil {
				t.Errorf("superseded memory image %s still in the store", snap.Keys[1])
			}
			info, err = d.Restore(ctx, snap2)
			if err != nil || !info.MemoryKept {
				t.Fatalf("second Restore: %+v, %v", info, err)
			}
			if err := d.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			execIn(ctx, t, d, id, "kill -0 "+pid)
			if err := d.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
			for _, k := range snap2.Keys {
				if _, err := d.SnapshotManager().Open(ctx, k); err == nil {
					t.Errorf("snapshot %s of a destroyed capsule still in the store", k)
				}
			}
			assertClean(t, d)
		})
	}
}

// rewriteMemoryImage replaces the archive published as name with edit's
// version of it (same metadata), through the snapshot engine.
func rewriteMemoryImage(ctx context.Context, t *testing.T, m *snapshot.Manager, name string, edit func(file string, data []byte) []byte) {
	t.Helper()
	r, err := m.Open(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	md := r.Metadata()
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.tar")
	if snapshot.IsCRIUVA(r) {
		// Stored by virtual address: rebuilt as the archive layout (which
		// the driver still reads) from the files CRIU wrote.
		files := filepath.Join(dir, "files")
		if err := snapshot.WriteCRIUImages(ctx, r, files); err != nil {
			t.Fatal(err)
		}
		md = maps.Clone(md)
		for k := range md {
			if strings.HasPrefix(k, "wrenn.criu_") && k != "wrenn.criu_inherit" {
				delete(md, k)
			}
		}
		tarFiles(t, files, orig)
	} else if err := r.WriteFile(ctx, orig); err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	in, err := os.Open(orig)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	outPath := filepath.Join(dir, "new.tar")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		b = edit(h.Name, b)
		h.Size = int64(len(b))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(tw.Close(), out.Close()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Pause(ctx, name, outPath, snapshot.PauseOptions{Metadata: md}); err != nil {
		t.Fatal(err)
	}
}

// tarFiles archives the files of dir (flat) into dst.
func tarFiles(t *testing.T, dir, dst string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(out)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.Name(), Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(tw.Close(), out.Close()); err != nil {
		t.Fatal(err)
	}
}

func TestCRIURestoreFallsBackToBoot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(ctx context.Context, t *testing.T, m *snapshot.Manager, name string)
	}{
		{"missing images", func(ctx context.Context, t *testing.T, m *snapshot.Manager, name string) {
			if err := m.Delete(ctx, name); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated pages", func(ctx context.Context, t *testing.T, m *snapshot.Manager, name string) {
			rewriteMemoryImage(ctx, t, m, name, func(file string, b []byte) []byte {
				if strings.HasPrefix(file, "pages-") {
					return b[:len(b)/2]
				}
				return b
			})
		}},
		{"damaged page blocks", func(ctx context.Context, t *testing.T, m *snapshot.Manager, name string) {
			// The image by virtual address with its stored blocks damaged:
			// the checksum of the first block read fails.
			corruptBuilds(ctx, t, m, m.Store.(*store.Local), name)
		}},
		{"garbage core", func(ctx context.Context, t *testing.T, m *snapshot.Manager, name string) {
			rewriteMemoryImage(ctx, t, m, name, func(file string, b []byte) []byte {
				if strings.HasPrefix(file, "core-") {
					for i := 8; i < len(b); i++ {
						b[i] ^= 0x5a
					}
				}
				return b
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := criuDriver(t)
			ctx := testutil.Context(t, testutil.Long)
			id := "cl-criu-fallback"
			info := startCapsule(t, d, runtime.Spec{ID: id})
			execIn(ctx, t, d, id, "echo kept > /root/file")
			startCounter(ctx, t, d, info)
			one, err := d.CountHostObjects()
			if err != nil {
				t.Fatal(err)
			}
			snap, err := d.Snapshot(ctx, id)
			if err != nil || !snap.MemoryKept {
				t.Fatalf("Snapshot: %+v, %v", snap, err)
			}
			tc.damage(ctx, t, d.SnapshotManager(), snap.Keys[1])
			info, err = d.Restore(ctx, snap)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if info.MemoryKept || info.State != runtime.StateRunning {
				t.Fatalf("restored = %+v, want booted (memory not kept)", info)
			}
			if err := d.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			if got := execIn(ctx, t, d, id, "cat /root/file"); got != "kept" {
				t.Errorf("file after restore = %q", got)
			}
			// Booted: the counter process is gone (its pid file stays on
			// the disk, and the new pid namespace may reuse the number, so
			// look for a process that still runs the counter loop) and the
			// count no longer moves.
			if out, err := runcExec(ctx, d, id, "sh", "-c", "grep -l 'counter[.]pid' /proc/[0-9]*/cmdline 2>/dev/null || true"); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("a counter process runs after a boot: %q (%v)", out, err)
			}
			c0 := readCounter(ctx, t, d, id)
			time.Sleep(300 * time.Millisecond)
			if c1 := readCounter(ctx, t, d, id); c1 != c0 {
				t.Errorf("the count moved after a boot (%d → %d): the counter survived", c0, c1)
			}
			// Exactly one capsule's worth of host objects (a failed
			// restore leaves no mount, netns, loop or cgroup of its own).
			got, err := d.CountHostObjects()
			if err != nil {
				t.Fatal(err)
			}
			got.Processes, one.Processes = 0, 0
			if got != one {
				t.Errorf("host objects after the fallback: %+v, want those of one capsule: %+v", got, one)
			}
			if err := d.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
			assertClean(t, d)
		})
	}
}

// TestCRIUMemorySnapshotsOff keeps the files-only path when CRIU is turned
// off even though it works.
func TestCRIUMemorySnapshotsOff(t *testing.T) {
	cfg := criuConfig(t)
	cfg.DisableCRIU = true
	d := openDriver(t, cfg)
	if d.MemorySnapshots() {
		t.Fatal("MemorySnapshots with DisableCRIU")
	}
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-criu-off"})
	snap, err := d.Snapshot(ctx, "cl-criu-off")
	if err != nil || snap.MemoryKept || len(snap.Keys) != 1 {
		t.Fatalf("Snapshot = %+v, %v; want files only", snap, err)
	}
}

// TestConformanceWithCRIU runs the conformance suite on a driver whose
// pause-to-disk keeps memory.
func TestConformanceWithCRIU(t *testing.T) {
	criuConfig(t) // skips without WRENN_TEST_CRIU
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver { return criuDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(func(ctx context.Context, d runtime.Driver, id string, args ...string) (string, error) {
			return runcExec(ctx, d.(*container.Driver), id, args...)
		}),
	)
}
