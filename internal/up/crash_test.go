package up_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/up"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// The crash test runs `wrenn up` as a real child process (this test
// binary, re-executed with crashChildEnv set) so it can be killed with
// SIGKILL at any point.
const crashChildEnv = "WRENN_UP_CRASH_CHILD"

// runCrashChild is the child: an App on the home in the environment, with
// a small CPU overcommit (4 one-vCPU capsules on 2 CPUs: two ghost
// capsules and two live ones would block a create), until
// SIGTERM. It writes its URL to <home>/child.url once ready.
func runCrashChild() int {
	var c struct{ Home, Envd, Instance, Subnet, OnExit string }
	if err := json.Unmarshal([]byte(os.Getenv(crashChildEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	app, err := up.New(ctx, up.Config{
		Home: c.Home, Listen: "127.0.0.1:0", OnExit: up.OnExit(c.OnExit), EnvdPath: c.Envd, DefaultDiskSizeMB: 256,
		Instance: c.Instance, Subnet: netip.MustParsePrefix(c.Subnet), HeartbeatInterval: 2 * time.Second,
		Overcommit: scheduler.Overcommit{CPU: 2, Memory: 1, Disk: 1},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "up.New:", err)
		return 1
	}
	go func() {
		<-app.Ready()
		_ = os.WriteFile(filepath.Join(c.Home, "child.url"), []byte(app.URL()), 0o600)
	}()
	if err := app.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Run:", err)
		return 1
	}
	return 0
}

type crashChild struct {
	cmd *exec.Cmd
	url string
	c   *wrenn.Client
}

func startCrashChild(t *testing.T, home, onExit string) *crashChild {
	t.Helper()
	_ = os.Remove(filepath.Join(home, "child.url"))
	cfg, _ := json.Marshal(map[string]string{
		"Home": home, "Envd": envd(t), "Instance": fmt.Sprintf("wcr%d", os.Getpid()%10000), "Subnet": "10.167.0.0/16", "OnExit": onExit,
	})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &crashChild{cmd: cmd}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if b, err := os.ReadFile(filepath.Join(home, "child.url")); err == nil && len(b) > 0 {
			ch.url = string(b)
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatal("wrenn up child not ready in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	key, err := os.ReadFile(up.AdminKeyPath(home))
	if err != nil {
		t.Fatal(err)
	}
	if ch.c, err = wrenn.New(ch.url, strings.TrimSpace(string(key))); err != nil {
		t.Fatal(err)
	}
	return ch
}

func (ch *crashChild) kill9() {
	_ = ch.cmd.Process.Signal(syscall.SIGKILL)
	_ = ch.cmd.Wait()
}

func (ch *crashChild) stop(t *testing.T) {
	_ = ch.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- ch.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("wrenn up child exit: %v", err)
		}
	case <-time.After(3 * time.Minute):
		ch.kill9()
		t.Error("wrenn up child did not stop")
	}
}

// agentView lists the capsules the child's agent runs.
func agentView(ctx context.Context, t *testing.T, home string, ch *crashChild) map[string]pb.CapsuleState {
	t.Helper()
	secret, err := os.ReadFile(filepath.Join(home, "agent.secret"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ch.url+"/v1/admin/hosts", nil)
	key, _ := os.ReadFile(up.AdminKeyPath(home))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var hosts struct {
		Hosts []struct{ Address string } `json:"hosts"`
	}
	if err := json.NewDecoder(res.Body).Decode(&hosts); err != nil || len(hosts.Hosts) != 1 {
		t.Fatalf("hosts: %+v, %v", hosts, err)
	}
	hc := &http.Client{Transport: headerTransport{hostagent.SecretHeader, strings.TrimSpace(string(secret))}}
	cl := hostagentv1connect.NewHostAgentServiceClient(hc, "http://"+hosts.Hosts[0].Address)
	list, err := cl.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]pb.CapsuleState{}
	for _, c := range list.Msg.GetCapsules() {
		out[c.GetCapsuleId()] = c.GetState()
	}
	return out
}

type headerTransport struct{ k, v string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.k, h.v)
	return http.DefaultTransport.RoundTrip(r)
}

// disagreements compares the store (through the API) with the agent: no
// capsule may be left pending or starting, every live row must match the
// agent's state, and the agent runs nothing the store does not know live.
func disagreements(ctx context.Context, t *testing.T, home string, ch *crashChild) []string {
	rows, err := ch.c.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	onAgent := agentView(ctx, t, home, ch)
	want := map[string]pb.CapsuleState{
		wrenn.StatusRunning: pb.CapsuleState_CAPSULE_STATE_RUNNING, wrenn.StatusPaused: pb.CapsuleState_CAPSULE_STATE_PAUSED,
		wrenn.StatusHibernated: pb.CapsuleState_CAPSULE_STATE_HIBERNATED,
	}
	var out []string
	live := map[string]bool{}
	for _, r := range rows {
		st, ok := onAgent[r.ID]
		switch r.Status {
		case wrenn.StatusPending, wrenn.StatusStarting:
			out = append(out, fmt.Sprintf("%s still %s (agent: %v)", r.ID, r.Status, st))
		case wrenn.StatusRunning, wrenn.StatusPaused, wrenn.StatusHibernated:
			live[r.ID] = true
			if !ok || st != want[string(r.Status)] {
				out = append(out, fmt.Sprintf("%s is %s in the store, %v on the agent (present %v)", r.ID, r.Status, st, ok))
			}
		}
	}
	for id, st := range onAgent {
		if !live[id] {
			out = append(out, fmt.Sprintf("agent runs %s (%v) the store does not have live", id, st))
		}
	}
	return out
}

// TestKill9UpMidCreatePauseResume kills `wrenn up` with SIGKILL at several
// points of create, pause (to disk) and resume. After each restart the
// store agrees with the agent within one reconcile pass (nothing left
// pending/starting, no row disagreeing with its host) and a create
// succeeds at once — the host's capacity is small (CPU overcommit 2 on 2
// CPUs), so ghost capsules holding it would make creates answer 503,
// while the live capsules a round can leave (at most 2) never fill it.
func TestKill9UpMidCreatePauseResume(t *testing.T) {
	testutil.RequireRoot(t)
	home := t.TempDir()
	ctx := testutil.Context(t, 15*time.Minute)
	type step struct {
		name   string
		delay  time.Duration
		setup  func(*crashChild) (string, error)
		action func(*crashChild, string) error
	}
	create := func(ch *crashChild) (string, error) {
		c, err := ch.c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate})
		if err != nil {
			return "", err
		}
		return c.ID, nil
	}
	var steps []step
	for _, d := range []time.Duration{0, 20 * time.Millisecond, 40 * time.Millisecond, 70 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond} {
		steps = append(steps, step{"create", d, nil, func(ch *crashChild, _ string) error {
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() { _, _ = create(ch) })
			}
			wg.Wait()
			return nil
		}})
	}
	for _, d := range []time.Duration{0, 100 * time.Millisecond, 400 * time.Millisecond} {
		steps = append(steps, step{"pause", d, create, func(ch *crashChild, id string) error {
			_, err := ch.c.Pause(ctx, id, wrenn.PauseOptions{ToDisk: true})
			return err
		}})
	}
	for _, d := range []time.Duration{0, 100 * time.Millisecond, 400 * time.Millisecond} {
		steps = append(steps, step{"resume", d, func(ch *crashChild) (string, error) {
			id, err := create(ch)
			if err == nil {
				_, err = ch.c.Pause(ctx, id, wrenn.PauseOptions{ToDisk: true})
			}
			return id, err
		}, func(ch *crashChild, id string) error {
			_, err := ch.c.Resume(ctx, id, 0)
			return err
		}})
	}

	check := func(ch *crashChild, after string) {
		t.Helper()
		start := time.Now()
		var bad []string
		for {
			if bad = disagreements(ctx, t, home, ch); len(bad) == 0 {
				break
			}
			if time.Since(start) > 10*time.Second { // one heartbeat-triggered pass, with margin
				t.Errorf("after %s: store and agent still disagree after %v:\n  %s", after, time.Since(start), strings.Join(bad, "\n  "))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := ch.c.Create(ctx, wrenn.CreateParams{Template: up.MinimalTemplate}); err != nil {
			t.Errorf("after %s: create right after restart: %v", after, err)
		} else {
			t.Logf("after %s: consistent in %v; create ok", after, time.Since(start).Round(time.Millisecond))
		}
		// Start the next round empty.
		rows, _ := ch.c.List(ctx, "")
		for _, r := range rows {
			if err := ch.c.Delete(ctx, r.ID); err != nil {
				var ae *wrenn.Error
				if !errors.As(err, &ae) || ae.StatusCode != http.StatusNotFound {
					t.Errorf("delete %s: %v", r.ID, err)
				}
			}
		}
	}

	after := "first start"
	for _, s := range steps {
		ch := startCrashChild(t, home, string(up.OnExitPause))
		check(ch, after)
		id := ""
		if s.setup != nil {
			var err error
			if id, err = s.setup(ch); err != nil {
				ch.kill9()
				t.Fatalf("%s %v: setup: %v", s.name, s.delay, err)
			}
		}
		done := make(chan struct{})
		go func() { _ = s.action(ch, id); close(done) }()
		time.Sleep(s.delay)
		ch.kill9()
		<-done
		after = fmt.Sprintf("kill -9 mid-%s (%v)", s.name, s.delay)
	}
	last := startCrashChild(t, home, string(up.OnExitDestroy))
	check(last, after)
	last.stop(t)
}
