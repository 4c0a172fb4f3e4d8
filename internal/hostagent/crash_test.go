package hostagent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// leftovers counts the host objects that belong to the capsules of d:
// mounts under its state dir or its netns names, netns files, loop devices
// backed by its images, cgroups under its parent, and processes in them.
func leftovers(t testing.TB, d dirs) map[string]int {
	t.Helper()
	out := map[string]int{}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		// The driver's LXCFS mount lives as long as the driver, not a capsule.
		if strings.Contains(l, filepath.Join(d.driverState, "lxcfs")+"/") {
			continue
		}
		if strings.Contains(l, d.driverState) || strings.Contains(l, "/run/netns/"+d.tag+"-") {
			out["mounts"]++
		}
	}
	ns, _ := filepath.Glob("/run/netns/" + d.tag + "-*")
	out["netns"] = len(ns)
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range backing {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), d.driverState) {
			out["loops"]++
		}
	}
	for _, ctrl := range []string{"memory", "pids", "freezer", "cpu,cpuacct", "unified"} {
		subs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctrl, d.tag, "*"))
		for _, s := range subs {
			if st, err := os.Stat(s); err == nil && st.IsDir() {
				out["cgroups"]++
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "/"+d.tag+"/") {
			continue
		}
		// A zombie is dead and holds nothing but its pid; after a kill -9
		// of the agent, capsule inits are reparented to PID 1, which reaps
		// them on its own schedule.
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			continue
		}
		out["processes"]++
	}
	return out
}

func TestKill9MidCreateAndPause(t *testing.T) {
	d := newDirs(t)
	// A first in-process host prepares the driver's host objects and gives
	// the nft baseline; the final one checks and cleans up.
	h0 := startHost(t, d, nil)
	rules0, err := h0.driver.Network().RuleCount()
	if err != nil {
		t.Fatal(err)
	}
	h0.stop()

	createDelays := []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 120 * time.Millisecond, 250 * time.Millisecond}
	pauseDelays := []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond}
	// Pauses to disk (files only here) stop the capsule, unmount its disk,
	// publish it and free the host: a kill anywhere in that must keep the
	// capsule and its files (running again, or hibernated).
	diskDelays := []time.Duration{5 * time.Millisecond, 25 * time.Millisecond, 45 * time.Millisecond, 60 * time.Millisecond, 75 * time.Millisecond, 90 * time.Millisecond, 110 * time.Millisecond, 400 * time.Millisecond}
	if testing.Short() {
		createDelays = createDelays[1:3]
		pauseDelays = pauseDelays[1:2]
	}
	ctx := testutil.Context(t, 10*time.Minute)
	kill := func(name string, delay time.Duration, setup func(*agentProcess) error, action func(*agentProcess) error) {
		p := startAgentProcess(t, d)
		if setup != nil {
			if err := setup(p); err != nil {
				t.Fatalf("%s: setup: %v", name, err)
			}
		}
		var wg sync.WaitGroup
		wg.Go(func() { _ = action(p) })
		time.Sleep(delay)
		p.kill9()
		wg.Wait()
	}
	for i, delay := range createDelays {
		kill(fmt.Sprintf("mid-create %v", delay), delay, nil, func(p *agentProcess) error {
			_, err := p.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: fmt.Sprintf("cl-crash-c%d", i)}))
			return err
		})
	}
	for i, delay := range pauseDelays {
		id := fmt.Sprintf("cl-crash-p%d", i)
		kill(fmt.Sprintf("mid-pause %v", delay), delay, func(p *agentProcess) error {
			_, err := p.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id}))
			return err
		}, func(p *agentProcess) error {
			_, err := p.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id}))
			return err
		})
	}
	for i, delay := range diskDelays {
		id := fmt.Sprintf("cl-crash-d%d", i)
		kill(fmt.Sprintf("mid-pause-to-disk %v", delay), delay, func(p *agentProcess) error {
			if _, err := p.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id})); err != nil {
				return err
			}
			execOK(t, p.client, id, "/bin/sh", "-c", "echo "+id+" >/root/kept && sync")
			return nil
		}, func(p *agentProcess) error {
			_, err := p.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
			return err
		})
	}

	// Restart: every capsule is either usable or gone without a trace.
	h := startHost(t, d, nil)
	list, err := h.client.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	drv, err := h.driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(drv) != len(list.Msg.GetCapsules()) {
		t.Errorf("driver holds %d capsules, agent reports %d", len(drv), len(list.Msg.GetCapsules()))
	}
	t.Logf("after %d kills: %d capsules re-adopted", len(createDelays)+len(pauseDelays)+len(diskDelays), len(list.Msg.GetCapsules()))
	for _, cp := range list.Msg.GetCapsules() {
		id := cp.GetCapsuleId()
		t.Logf("re-adopted %s: %v", id, cp.GetState())
		switch cp.GetState() {
		case pb.CapsuleState_CAPSULE_STATE_PAUSED, pb.CapsuleState_CAPSULE_STATE_HIBERNATED:
			if _, err := h.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
				t.Errorf("resume re-adopted %s: %v", id, err)
				continue
			}
		case pb.CapsuleState_CAPSULE_STATE_RUNNING:
		default:
			t.Errorf("re-adopted %s in state %v", id, cp.GetState())
			continue
		}
		if got := execOK(t, h.client, id, "/bin/echo", id); got != id+"\n" {
			t.Errorf("exec in re-adopted %s: got %q", id, got)
		}
	}
	// Every pause target was fully created before the kill: it must be there.
	for i := range pauseDelays {
		id := fmt.Sprintf("cl-crash-p%d", i)
		if _, err := h.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id})); err != nil {
			t.Errorf("capsule %s (created, killed mid-pause) lost: %v", id, err)
		}
	}
	// So was every pause-to-disk target, with the file it wrote.
	for i := range diskDelays {
		id := fmt.Sprintf("cl-crash-d%d", i)
		if _, err := h.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id})); err != nil {
			t.Errorf("capsule %s (created, killed mid-pause to disk) lost: %v", id, err)
			continue
		}
		if got := execOK(t, h.client, id, "/bin/cat", "/root/kept"); got != id+"\n" {
			t.Errorf("capsule %s (killed mid-pause to disk): its file holds %q, want %q", id, got, id+"\n")
		}
	}
	for _, cp := range list.Msg.GetCapsules() {
		if _, err := h.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: cp.GetCapsuleId()})); err != nil {
			t.Errorf("destroy %s: %v", cp.GetCapsuleId(), err)
		}
	}
	// Teardowns run after the answer (teardown.go).
	testutil.Eventually(t, testutil.Short, func() bool { p, _ := h.agent.Teardowns(); return p == 0 }, "capsule teardowns still pending")
	clean := func() bool {
		for _, n := range leftovers(t, d) {
			if n != 0 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(testutil.Short)
	for !clean() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !clean() {
		for k, n := range leftovers(t, d) {
			if n != 0 {
				t.Errorf("leaked %d %s", n, k)
			}
		}
	}
	if rules, err := h.driver.Network().RuleCount(); err != nil || rules != rules0 {
		t.Errorf("nft rules: got %d (%v), want %d as before any capsule", rules, err, rules0)
	}
	ents, _ := os.ReadDir(filepath.Join(d.agentState, "capsules"))
	if len(ents) != 0 {
		t.Errorf("%d agent state files left", len(ents))
	}
}
