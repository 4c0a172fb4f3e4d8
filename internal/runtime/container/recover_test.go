package container_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

var crashHelper = flag.String("crash-helper", "", "JSON config: run as the agent that TestAgentKill9 kills")

// helperConfig is the part of container.Config the crash helper needs.
type helperConfig struct {
	StateDir, Templates, Envd, CgroupParent, Table, NetnsPrefix string
	Subnet                                                      netip.Prefix
}

func toHelper(c container.Config) helperConfig {
	return helperConfig{
		StateDir: c.StateDir, Templates: c.Templates.Dir, Envd: c.EnvdPath, CgroupParent: c.CgroupParent,
		Table: c.Network.Table, NetnsPrefix: c.Network.NetnsPrefix, Subnet: c.Network.Subnet,
	}
}

func (h helperConfig) config() container.Config {
	return container.Config{
		StateDir: h.StateDir, Templates: template.Store{Dir: h.Templates}, EnvdPath: h.Envd,
		DefaultMemoryMB: 128, DefaultDiskSizeMB: 64, PidsLimit: 128, CgroupParent: h.CgroupParent,
		Network: network.Config{Subnet: h.Subnet, Table: h.Table, NetnsPrefix: h.NetnsPrefix},
		// Spares on: the kill leaves them for the next Recover to clean.
		ColdSpares: container.DefaultColdSpares,
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// TestCrashHelper is the "agent" process of TestAgentKill9: it creates,
// starts and pauses capsules forever, announcing each, until killed.
func TestCrashHelper(t *testing.T) {
	if *crashHelper == "" {
		t.Skip("runs only as TestAgentKill9's subprocess")
	}
	var h helperConfig
	if err := json.Unmarshal([]byte(*crashHelper), &h); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := container.New(ctx, h.config())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	d.SetWarmPool(tmplName, 1)
	for i := 0; ; i++ {
		id := fmt.Sprintf("cl-crash-%d", i)
		if _, err := d.Create(ctx, runtime.Spec{ID: id, Template: tmplName}); err != nil {
			t.Fatal(err)
		}
		if i%3 != 2 {
			info, err := d.Start(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
		}
		if i%3 == 1 {
			if err := d.Pause(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Printf("ready %s\n", id)
	}
}

// TestAgentKill9 kills an agent process with SIGKILL in the middle of
// creating capsules, then starts a new driver on the same state: finished
// capsules are re-adopted (running ones still answer), the half-made one
// and the warm pool are cleaned up, and destroying the adopted ones leaves
// no host object behind.
func TestAgentKill9(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	hcfg, _ := json.Marshal(toHelper(cfg))
	ctx := testutil.Context(t, testutil.Long)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashHelper$", "-crash-helper="+string(hcfg))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	// The helper is SIGKILLed, so its TestMain cannot remove the temp
	// directory it makes: make it inside this test's, which is removed.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && len(ready) < 4 {
		if id, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
			ready[id] = true
		}
	}
	if len(ready) < 4 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper made only %d capsules", len(ready))
	}
	time.Sleep(40 * time.Millisecond) // land inside the next create
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	d := openDriver(t, cfg) // New + Recover
	list, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]runtime.Info{}
	for _, c := range list {
		got[c.ID] = c
	}
	for id := range ready {
		info, ok := got[id]
		if !ok {
			t.Errorf("capsule %s was not re-adopted", id)
			continue
		}
		var n int
		fmt.Sscanf(id, "cl-crash-%d", &n)
		want := []runtime.State{runtime.StateRunning, runtime.StatePaused, runtime.StateCreated}[n%3]
		if info.State != want {
			t.Errorf("%s: state %s, want %s", id, info.State, want)
		}
		if want == runtime.StateRunning {
			if err := d.WaitReady(testutil.Context(t, testutil.Short), info); err != nil {
				t.Errorf("%s: envd lost: %v", id, err)
			}
		}
	}
	for id := range got {
		if !ready[id] {
			// Finished just before the kill, announced too late: fine, but
			// it must be complete.
			t.Logf("adopted %s (created before the kill, not yet announced)", id)
		}
	}
	for id := range got {
		if err := d.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy %s: %v", id, err)
		}
	}
	assertClean(t, d)
}

// assertClean fails unless the driver has no host objects left (the nft
// table keeps only its base rules).
func assertClean(t *testing.T, d *container.Driver) {
	t.Helper()
	got, err := d.CountHostObjects()
	if err != nil {
		t.Fatal(err)
	}
	want := container.Leaks{Rules: got.Rules}
	if got != want {
		t.Errorf("host objects left: %+v", got)
	}
	if got.Rules != baseRules {
		t.Errorf("nft rules = %d, want the %d base rules", got.Rules, baseRules)
	}
}

// baseRules is the number of rules the network table always has.
const baseRules = 10 // input 4 (2 for the DNS forwarder), forward 5, postrouting 1

func TestCreateDestroyCycles(t *testing.T) {
	d := newDriver(t)
	n := 300
	if testing.Short() {
		n = 30
	}
	ctx := testutil.Context(t, 15*time.Minute)
	before, err := d.CountHostObjects()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("cl-cyc-%d", i)
		spec := runtime.Spec{ID: id, Template: tmplName, AllowInternet: i%2 == 0}
		if _, err := d.Create(ctx, spec); err != nil {
			t.Fatalf("cycle %d: Create: %v", i, err)
		}
		info, err := d.Start(ctx, id)
		if err != nil {
			t.Fatalf("cycle %d: Start: %v", i, err)
		}
		if err := d.WaitReady(ctx, info); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if i%5 == 0 {
			if err := d.Pause(ctx, id); err != nil {
				t.Fatalf("cycle %d: Pause: %v", i, err)
			}
		}
		if err := d.Destroy(ctx, id); err != nil {
			t.Fatalf("cycle %d: Destroy: %v", i, err)
		}
	}
	after, err := d.CountHostObjects()
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("after %d cycles: host objects %+v, before %+v", n, after, before)
	}
	assertClean(t, d)
}

// TestFailedRestoreDestroys: a restore that cannot complete leaves no
// capsule reporting anything and no host object, even when the caller's
// context is already cancelled by then.
func TestFailedRestoreDestroys(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	mgr, local := localManager(t, dir+"/snaps")
	cfg.Snapshots = mgr
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-rf"})
	snap, err := d.Snapshot(ctx, "cl-rf")
	if err != nil {
		t.Fatal(err)
	}
	// The image's data is damaged: restore must fail its checksums.
	corruptBuilds(ctx, t, mgr, local, snap.Keys[0])
	if _, err := d.Restore(ctx, snap); err == nil {
		t.Fatal("Restore of a damaged snapshot succeeded")
	}
	if _, err := d.Inspect(ctx, "cl-rf"); err == nil {
		t.Errorf("a capsule is left after the failed restore")
	}
	assertClean(t, d)
	// The same with a context that ends before or during the restore, at
	// growing delays (0 is already cancelled, so at least one attempt is
	// cancelled): every cancelled restore leaves nothing behind. A restore
	// that beats its deadline is snapshotted again for the next delay.
	startCapsule(t, d, runtime.Spec{ID: "cl-rf2"})
	snap2, err := d.Snapshot(ctx, "cl-rf2")
	if err != nil {
		t.Fatal(err)
	}
	cancelled := 0
	for _, delay := range []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond, 80 * time.Millisecond} {
		cctx, cancel := context.WithTimeout(ctx, delay)
		_, err := d.Restore(cctx, snap2)
		cancel()
		if err == nil {
			if snap2, err = d.Snapshot(ctx, "cl-rf2"); err != nil {
				t.Fatal(err)
			}
			continue
		}
		cancelled++
		if _, err := d.Inspect(ctx, "cl-rf2"); err == nil {
			t.Fatalf("a capsule is left after the restore cancelled at %v", delay)
		}
		assertClean(t, d)
		// The snapshot stays in the store: the next attempt restores it.
	}
	if cancelled == 0 {
		t.Fatal("no restore was cancelled, not even with an expired context")
	}
}

var snapCrashHelper = flag.String("snap-crash-helper", "", "JSON config: run as the agent TestKill9MidPauseToDisk kills")

// snapCrashConfig is what the pause-to-disk crash helper gets.
type snapCrashConfig struct {
	Driver helperConfig
	Point  string // the step of Snapshot to be killed at
}

// TestSnapCrashHelper is the "agent" of TestKill9MidPauseToDisk: it starts
// a capsule, writes a file in it and pauses it to disk (files only), and
// waits, announcing it, at the step it is to be killed at.
func TestSnapCrashHelper(t *testing.T) {
	if *snapCrashHelper == "" {
		t.Skip("runs only as TestKill9MidPauseToDisk's subprocess")
	}
	var h snapCrashConfig
	if err := json.Unmarshal([]byte(*snapCrashHelper), &h); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := container.New(ctx, h.Driver.config())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	const id = "cl-snapcrash"
	if _, err := d.Create(ctx, runtime.Spec{ID: id, Template: tmplName}); err != nil {
		t.Fatal(err)
	}
	info, err := d.Start(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if _, err := runcExec(ctx, d, id, "/bin/sh", "-c", "echo kept >/root/kept && sync"); err != nil {
		t.Fatal(err)
	}
	container.SetSnapshotCrashHook(func(point, snapID string) {
		if point == h.Point {
			fmt.Printf("at %s %s\n", point, snapID)
			select {} // killed here
		}
	})
	if _, err := d.Snapshot(ctx, id); err != nil {
		t.Fatal(err)
	}
	fmt.Println("done")
}

// TestKill9MidPauseToDisk kills the agent process at each step of a pause
// to disk and starts a new driver on its state: the capsule and the file
// it wrote are kept — stopped with its disk mounted again before the
// snapshot's commit (the store keeps nothing of the attempt), paused to
// disk after it — and destroying it leaves no host object behind.
func TestKill9MidPauseToDisk(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	for _, point := range []string{"stopped", "detached", "published", "committed", "releasing"} {
		t.Run(point, func(t *testing.T) {
			cfg := testConfig(t, t.TempDir())
			hcfg, _ := json.Marshal(snapCrashConfig{Driver: toHelper(cfg), Point: point})
			ctx := testutil.Context(t, testutil.Long)
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSnapCrashHelper$", "-snap-crash-helper="+string(hcfg))
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var snapID string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if rest, ok := strings.CutPrefix(sc.Text(), "at "+point); ok {
					snapID = strings.TrimSpace(rest)
					break
				}
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if sc.Err() != nil || (snapID == "" && point != "stopped") {
				t.Fatalf("the helper did not reach %q (snapshot %q, %v)", point, snapID, sc.Err())
			}

			d := openDriver(t, cfg) // New + Recover
			const id = "cl-snapcrash"
			info, err := d.Inspect(ctx, id)
			if err != nil {
				t.Fatalf("capsule killed mid-pause at %q not kept: %v", point, err)
			}
			committed := point == "committed" || point == "releasing"
			if committed {
				if info.State != runtime.StateSnapshotted {
					t.Fatalf("state %s after a kill past the commit, want %s", info.State, runtime.StateSnapshotted)
				}
				snap, ok := d.CommittedSnapshot(id)
				if !ok || snap.ID != snapID {
					t.Fatalf("committed snapshot %q (%v), want %q", snap.ID, ok, snapID)
				}
				if info, err = d.Restore(ctx, snap); err != nil {
					t.Fatalf("Restore: %v", err)
				}
			} else {
				if info.State != runtime.StateStopped {
					t.Fatalf("state %s after a kill before the commit, want %s", info.State, runtime.StateStopped)
				}
				if snapID != "" {
					if r, err := d.SnapshotManager().Open(ctx, snapID); err == nil {
						_ = r.Close()
						t.Errorf("the uncommitted snapshot %s is still in the store", snapID)
					}
				}
				if info, err = d.Start(ctx, id); err != nil {
					t.Fatalf("Start: %v", err)
				}
			}
			if err := d.WaitReady(ctx, info); err != nil {
				t.Fatal(err)
			}
			if got, err := runcExec(ctx, d, id, "/bin/cat", "/root/kept"); err != nil || got != "kept\n" {
				t.Errorf("the capsule's file after a kill at %q: %q, %v", point, got, err)
			}
			if err := d.Destroy(ctx, id); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			assertClean(t, d)
		})
	}
}
