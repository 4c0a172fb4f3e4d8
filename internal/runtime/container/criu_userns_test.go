package container_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// hostIDBase is the host uid capsule root maps to in the user namespace of
// the host process pid (the first line of its uid_map), 0 without one.
func hostIDBase(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 || f[0] != "0" {
		t.Fatalf("uid_map of %d: %q", pid, b)
	}
	return f[1]
}

// TestCRIUKeepsMemoryWithUserNS: with user namespaces on (the default), a
// capsule's processes survive pause to disk and resume, on the same driver
// and on another one (another "host", its own id ranges) from the same
// store: the counter continues with the same PID, and the restored tasks
// run in the user namespace the restoring driver made for the capsule (a
// new id range: capsule root is that range's first host uid, root inside),
// with the contents and owners of the tmpfs mounts /dev, /dev/shm and
// /run kept.
func TestCRIUKeepsMemoryWithUserNS(t *testing.T) {
	root := t.TempDir()
	newHost := func(name string, shared *snapshot.Manager) *container.Driver {
		cfg := criuConfig(t)
		cfg.StateDir = filepath.Join(root, name)
		if shared != nil {
			cfg.Snapshots = &snapshot.Manager{Store: shared.Store, TempDir: t.TempDir()}
		}
		d := openDriver(t, cfg)
		if !d.MemorySnapshots() {
			t.Fatalf("memory snapshots off with user namespaces on: %s", d.CRIUUnavailableReason())
		}
		return d
	}
	mgr, _ := localManager(t, filepath.Join(root, "shared"))
	a := newHost("host-a", mgr)
	b := newHost("host-b", mgr)
	ctx := testutil.Context(t, 5*time.Minute)
	const id = "cl-criu-userns"
	info := startCapsule(t, a, runtime.Spec{ID: id})
	if hostIDBase(t, info.PID) == "0" {
		t.Fatal("capsule without a user namespace")
	}
	execIn(ctx, t, a, id, "echo shm > /dev/shm/x && echo run > /run/x && echo dev > /dev/x && "+
		"chown 1000:1001 /dev/shm/x /run/x && chmod 0640 /dev/shm/x")
	startCounter(ctx, t, a, info)
	pid := execIn(ctx, t, a, id, "cat /tmp/counter.pid")

	check := func(d *container.Driver, info runtime.Info, where string) {
		t.Helper()
		if !info.MemoryKept || info.State != runtime.StateRunning {
			t.Fatalf("%s: restored = %+v, want running with memory kept", where, info)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			t.Fatal(err)
		}
		before := readCounter(ctx, t, d, id)
		if !waitFor(testutil.Short, func() bool { return readCounter(ctx, t, d, id) > before }) {
			t.Fatalf("%s: counter stuck at %d after restore", where, before)
		}
		if got := execIn(ctx, t, d, id, "cat /tmp/counter.pid"); got != pid {
			t.Errorf("%s: counter pid = %s, want %s (not the same process)", where, got, pid)
		}
		// The driver's range for the capsule (a new one: the old range
		// was freed at the snapshot, or is another host's).
		base := hostIDBase(t, info.PID)
		if base == "0" {
			t.Errorf("%s: restored without a user namespace", where)
		}
		if u := strconv.Itoa(hostUID(t, info.PID)); u != base {
			t.Errorf("%s: envd runs as host uid %s, want capsule root %s", where, u, base)
		}
		want := "0 0\nshm 1000 1001 640\nrun 1000 1001\ndev 0 0"
		got := execIn(ctx, t, d, id, `awk '/^Uid:/{u=$2}/^Gid:/{g=$2}END{print u, g}' /proc/`+pid+`/status; `+
			`echo $(cat /dev/shm/x) $(stat -c '%u %g %a' /dev/shm/x); echo $(cat /run/x) $(stat -c '%u %g' /run/x); `+
			`echo $(cat /dev/x) $(stat -c '%u %g' /dev/x)`)
		if got != want {
			t.Errorf("%s: credentials and tmpfs files = %q, want %q", where, got, want)
		}
	}

	snap, err := a.Snapshot(ctx, id)
	if err != nil || !snap.MemoryKept {
		t.Fatalf("Snapshot: %+v, %v; want memory kept", snap, err)
	}
	info, err = a.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	check(a, info, "same host")

	// Another driver with its own id ranges resumes it from the store.
	snap, err = a.Snapshot(ctx, id)
	if err != nil || !snap.MemoryKept {
		t.Fatalf("second Snapshot: %+v, %v; want memory kept", snap, err)
	}
	assertClean(t, a)
	info, err = b.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore on B: %v", err)
	}
	check(b, info, "other host")
	if err := b.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	assertClean(t, b)
}
