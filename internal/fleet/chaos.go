package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Fault names of the chaos suite.
const (
	FaultKillAgent     = "kill -9 agent"
	FaultKillReplica   = "kill -9 replica"
	FaultKillPostgres  = "kill -9 postgresql"
	FaultKillS3        = "kill -9 s3 gateway"
	FaultPartitionHost = "partition host"
	// FaultDiskFull fills one host's disk (Options.HomeSizeMB) while
	// the clients run, then frees it.
	FaultDiskFull = "disk full"
	// FaultKillAgentMove drains a host and kills an agent (the drained
	// host's or the one its capsules go to) while the drain moves them.
	FaultKillAgentMove = "kill -9 agent during a move"
)

// AllFaults are the chaos suite's faults, in the order a run injects them.
var AllFaults = []string{FaultKillAgent, FaultKillReplica, FaultKillPostgres, FaultKillS3, FaultPartitionHost, FaultKillAgentMove, FaultDiskFull}

// ChaosOptions bound a chaos run.
type ChaosOptions struct {
	// Faults to inject, in order (default: AllFaults once; the disk fault
	// only with Options.HomeSizeMB).
	Faults []string
	// Workers is the number of clients cycling create → exec → pause →
	// resume → exec → delete during the faults (default 2).
	Workers int
	// Down is how long a killed process stays down, or a partition lasts
	// (default 3 heartbeat intervals: long enough for the control plane to
	// notice).
	Down time.Duration
	// Hibernated capsules whose files must survive every fault (default 2).
	Keepers int
	// Steady capsules stay running through every fault and must answer
	// at the end (default 2).
	Steady int
	// Builds starts a template build (FROM minimal, one RUN step) during
	// each fault; every build must end (succeeded, or failed with a
	// reason) within BuildsEnd after the last fault, and a succeeded
	// one's template must start capsules.
	Builds    bool
	BuildsEnd time.Duration
	// Moves: during every fault a mover drains a random host and
	// undrains it again, so capsules move between hosts all the time.
	Moves bool
	// KillsDuringMoves lets the mover run while a process a move depends
	// on is killed (agent, replica, PostgreSQL) or a disk is full;
	// FaultKillAgentMove kills
	// an agent mid-drain either way. Without it a kill cannot land between
	// a move's adopt and its store update, which leaves the capsule
	// hibernated (intact) on its old host instead of running on the new
	// one (docs/FLEET.md, "Left").
	KillsDuringMoves bool
	Log              func(format string, a ...any)
}

// ChaosReport is what a run saw.
type ChaosReport struct {
	// Statuses counts API answers by status code; Transport counts
	// requests that got no answer (the balancer had no replica).
	Statuses  map[int]int
	Transport int
	Cycles    int
	// Problems are broken invariants: a 500, a row disagreeing with its
	// host after the settle time, a lost or corrupted file.
	Problems []string
	// Settle is how long each fault took to settle (all rows agreeing).
	Settle map[string]time.Duration
	// Builds counts the builds by how they ended.
	Builds map[string]int
	// Drains counts the drains the mover started (Moves); Moved the
	// capsules they moved.
	Drains, Moved int
}

type chaos struct {
	f    *Fleet
	pg   *Postgres
	s3   *S3
	o    ChaosOptions
	mu   sync.Mutex
	rep  ChaosReport
	rng  *rand.Rand
	stop atomic.Bool
}

// RunChaos injects faults into f while workers drive the API, checks the
// invariants after each, and returns the report. pg and s3 are the
// fleet's own PostgreSQL and S3 gateway (never shared ones).
func RunChaos(ctx context.Context, f *Fleet, pg *Postgres, s3 *S3, o ChaosOptions) (*ChaosReport, error) {
	if len(o.Faults) == 0 {
		for _, fault := range AllFaults {
			if fault != FaultDiskFull || f.o.HomeSizeMB > 0 {
				o.Faults = append(o.Faults, fault)
			}
		}
	}
	if o.BuildsEnd == 0 {
		o.BuildsEnd = 3 * time.Minute
	}
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.Down == 0 {
		o.Down = 3 * f.o.HeartbeatInterval
	}
	if o.Keepers == 0 {
		o.Keepers = 2
	}
	if o.Steady == 0 {
		o.Steady = 2
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	c := &chaos{f: f, pg: pg, s3: s3, o: o, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 24))} //nolint:gosec // test randomness
	c.rep.Statuses, c.rep.Settle, c.rep.Builds = map[int]int{}, map[string]time.Duration{}, map[string]int{}

	keepers, err := c.makeKeepers(ctx)
	if err != nil {
		return nil, err
	}
	var steady []string
	for i := range o.Steady {
		var cp capsuleJSON
		if err := f.AdminDo(ctx, http.MethodPost, "/v1/capsules", map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512, "timeout_sec": 3600}, &cp); err != nil {
			return nil, fmt.Errorf("steady capsule %d: %w", i, err)
		}
		steady = append(steady, cp.ID)
	}
	var builds []string
	for n, fault := range o.Faults {
		c.stop.Store(false)
		var wg sync.WaitGroup
		for w := range o.Workers {
			wg.Go(func() { c.worker(ctx, w) })
		}
		if o.Builds {
			wg.Go(func() {
				if id := c.startBuild(ctx, n); id != "" {
					c.mu.Lock()
					builds = append(builds, id)
					c.mu.Unlock()
				}
			})
		}
		// A full disk is left out too: a capsule moved onto the full host
		// and paused there again cannot start until the space is back, and
		// nothing starts it then (docs/FLEET.md, "Left").
		killsMover := fault == FaultKillAgent || fault == FaultKillReplica || fault == FaultKillPostgres || fault == FaultDiskFull
		if o.Moves && fault != FaultKillAgentMove && (o.KillsDuringMoves || !killsMover) {
			wg.Go(func() { c.mover(ctx) })
		}
		time.Sleep(f.o.HeartbeatInterval)
		o.Log("fault: %s", fault)
		if err := c.inject(ctx, fault); err != nil {
			c.stop.Store(true)
			wg.Wait()
			return &c.rep, fmt.Errorf("inject %s: %w", fault, err)
		}
		time.Sleep(f.o.HeartbeatInterval)
		c.stop.Store(true)
		wg.Wait()
		if o.Moves || fault == FaultKillAgentMove {
			c.undrainAll(ctx)
		}
		d, err := c.settle(ctx)
		c.rep.Settle[fault] = d
		if err != nil {
			c.problem("after %s: %v", fault, err)
		}
		o.Log("%s settled in %v", fault, d.Round(time.Millisecond))
	}
	c.checkKeepers(ctx, keepers)
	// One more build once the faults are over: it must succeed.
	c.stop.Store(false)
	final := c.startBuild(ctx, len(o.Faults))
	c.stop.Store(true)
	c.checkBuilds(ctx, builds)
	if final == "" {
		c.problem("no replica took a build after the faults")
	} else if st := c.checkBuilds(ctx, []string{final}); st != "succeeded" {
		c.problem("the build after the faults ended %q, want succeeded", st)
	}
	for _, id := range steady {
		var r struct {
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
		}
		var cp capsuleJSON
		if err := f.AdminDo(ctx, http.MethodGet, "/v1/admin/capsules/"+id, nil, &cp); err != nil || cp.Status != "running" {
			c.problem("steady capsule %s after the faults: %+v %v", id, cp, err)
			continue
		}
		if err := f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+id+"/exec", map[string]any{"cmd": "echo", "args": []string{"ok"}}, &r); err != nil || r.ExitCode != 0 {
			c.problem("steady capsule %s does not answer after the faults: %+v %v", id, r, err)
		}
	}
	c.mu.Lock()
	for code, n := range c.rep.Statuses {
		if code == http.StatusInternalServerError {
			c.rep.Problems = append(c.rep.Problems, fmt.Sprintf("the API answered 500 %d times", n))
		}
	}
	c.mu.Unlock()
	return &c.rep, nil
}

func (c *chaos) problem(format string, a ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Problems = append(c.rep.Problems, fmt.Sprintf(format, a...))
}

// do calls the API and records the answer's status.
func (c *chaos) do(ctx context.Context, method, path string, in, out any) error {
	err := c.f.AdminDo(ctx, method, path, in, out)
	c.mu.Lock()
	defer c.mu.Unlock()
	var ae *APIError
	switch {
	case err == nil:
		c.rep.Statuses[200]++
	case errors.As(err, &ae):
		c.rep.Statuses[ae.Status]++
		if ae.Status == http.StatusInternalServerError {
			c.rep.Problems = append(c.rep.Problems, fmt.Sprintf("500 on %s %s: %s", method, path, ae.Body))
		}
	default:
		c.rep.Transport++
	}
	return err
}

type capsuleJSON struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	HostID      string `json:"host_id"`
	ErrorReason string `json:"error_reason,omitempty"`
}

// worker cycles capsules until stopped; failures are expected during a
// fault and only counted (a capsule left behind is deleted at the end).
func (c *chaos) worker(ctx context.Context, w int) {
	for !c.stop.Load() && ctx.Err() == nil {
		var cp capsuleJSON
		if err := c.do(ctx, http.MethodPost, "/v1/capsules", map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512, "timeout_sec": 600}, &cp); err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		steps := []struct{ method, path string }{
			{http.MethodPost, "/v1/capsules/" + cp.ID + "/exec"},
			{http.MethodPost, "/v1/capsules/" + cp.ID + "/pause"},
			{http.MethodPost, "/v1/capsules/" + cp.ID + "/resume"},
			{http.MethodPost, "/v1/capsules/" + cp.ID + "/exec"},
		}
		for _, s := range steps {
			var body any
			if strings.HasSuffix(s.path, "/exec") {
				body = map[string]any{"cmd": "echo", "args": []string{fmt.Sprint(w)}}
			}
			if err := c.do(ctx, s.method, s.path, body, nil); err != nil {
				break
			}
		}
		for range 20 { // delete, retrying through a fault
			err := c.do(ctx, http.MethodDelete, "/v1/capsules/"+cp.ID, nil, nil)
			var ae *APIError
			if err == nil || errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		c.mu.Lock()
		c.rep.Cycles++
		c.mu.Unlock()
	}
}

func (c *chaos) inject(ctx context.Context, fault string) error {
	switch fault {
	case FaultKillAgent:
		i := c.rng.IntN(len(c.f.Agents))
		c.f.KillAgent(i)
		time.Sleep(c.o.Down)
		return c.f.StartAgent(ctx, i)
	case FaultKillReplica:
		i := c.rng.IntN(len(c.f.Replicas))
		c.f.KillReplica(i)
		time.Sleep(c.o.Down)
		return c.f.StartReplica(ctx, i)
	case FaultKillPostgres:
		c.pg.Kill()
		time.Sleep(c.o.Down)
		return c.pg.Start(ctx)
	case FaultKillS3:
		c.s3.Kill()
		time.Sleep(c.o.Down)
		return c.s3.Start(ctx)
	case FaultDiskFull:
		i := c.rng.IntN(len(c.f.Agents))
		undo, err := c.f.FillDisk(i)
		if err != nil {
			if undo != nil {
				_ = undo()
			}
			return err
		}
		c.o.Log("host %d: disk full", i)
		time.Sleep(c.o.Down)
		return undo()
	case FaultKillAgentMove:
		return c.killDuringMove(ctx)
	case FaultPartitionHost:
		i := c.rng.IntN(len(c.f.Agents))
		a := c.f.Agents[i]
		link := fmt.Sprintf("%sh%d", c.f.o.Name, a.Index)
		// Every packet on the host's link is dropped, both ways, by a
		// table of the fleet's own in the host's namespace.
		table := c.f.o.Name + "-partition"
		rules := fmt.Sprintf(`table inet %[1]s {
	chain pin { type filter hook input priority -10; iifname %[2]q drop; }
	chain pout { type filter hook output priority -10; oifname %[2]q drop; }
	chain pfwd { type filter hook forward priority -10; iifname %[2]q drop; oifname %[2]q drop; }
}
`, table, link)
		cmd := exec.CommandContext(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %w: %s", err, out)
		}
		time.Sleep(c.o.Down)
		if out, err := exec.CommandContext(context.WithoutCancel(ctx), "nft", "delete", "table", "inet", table).CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %w: %s", err, out)
		}
		return nil
	}
	return fmt.Errorf("unknown fault %q", fault)
}

// mover drains a random host, waits two heartbeats (the drain moves its
// capsules to the others), undrains it and waits one, until stopped.
func (c *chaos) mover(ctx context.Context) {
	for !c.stop.Load() && ctx.Err() == nil {
		h := c.f.Agents[rand.IntN(len(c.f.Agents))].HostID //nolint:gosec // test randomness
		if c.do(ctx, http.MethodPost, "/v1/admin/hosts/"+h+"/drain", nil, nil) == nil {
			c.mu.Lock()
			c.rep.Drains++
			c.mu.Unlock()
		}
		time.Sleep(2 * c.f.o.HeartbeatInterval)
		if d, err := c.hostDrain(ctx, h); err == nil && d != nil {
			c.mu.Lock()
			c.rep.Moved += d.Moved
			c.mu.Unlock()
		}
		_ = c.do(ctx, http.MethodPost, "/v1/admin/hosts/"+h+"/undrain", nil, nil)
		time.Sleep(c.f.o.HeartbeatInterval)
	}
}

// undrainAll makes every host schedulable again (retrying through the
// end of a fault).
func (c *chaos) undrainAll(ctx context.Context) {
	for _, a := range c.f.Agents {
		for range 40 {
			if c.do(ctx, http.MethodPost, "/v1/admin/hosts/"+a.HostID+"/undrain", nil, nil) == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// drainJSON is a host's drain as the API shows it.
type drainJSON struct {
	State string `json:"state"`
	Moved int    `json:"moved"`
	Left  []struct {
		ID     string `json:"capsule_id"`
		Reason string `json:"reason"`
	} `json:"left"`
}

// hostDrain reads host h's drain (nil when it is not draining).
func (c *chaos) hostDrain(ctx context.Context, h string) (*drainJSON, error) {
	var out struct {
		Drain *drainJSON `json:"drain"`
	}
	err := c.f.AdminDo(ctx, http.MethodGet, "/v1/admin/hosts/"+h, nil, &out)
	return out.Drain, err
}

// killDuringMove drains a host holding capsules and, while the drain
// moves them (its pass starts within a reconcile interval), kills with
// SIGKILL the agent of that host or of another (the one adopting), then
// restarts it; the host is undrained after the fault.
func (c *chaos) killDuringMove(ctx context.Context) error {
	src := c.rng.IntN(len(c.f.Agents))
	h := c.f.Agents[src].HostID
	if err := c.do(ctx, http.MethodPost, "/v1/admin/hosts/"+h+"/drain", nil, nil); err != nil {
		return err
	}
	// Kill once the drain has moved one capsule and has more to go (or
	// after a reconcile interval and a half if it never gets there).
	deadline := time.Now().Add(c.f.o.ReconcileInterval * 3 / 2)
	for time.Now().Before(deadline) {
		if d, err := c.hostDrain(ctx, h); err == nil && d != nil && d.Moved > 0 && len(d.Left) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	victim := src
	if len(c.f.Agents) > 1 && c.rng.IntN(2) == 1 {
		victim = (src + 1 + c.rng.IntN(len(c.f.Agents)-1)) % len(c.f.Agents)
	}
	if d, err := c.hostDrain(ctx, h); err == nil && d != nil {
		c.o.Log("killing agent %d while host %d drains (moved %d, left %d)", victim, src, d.Moved, len(d.Left))
	}
	c.f.KillAgent(victim)
	time.Sleep(c.o.Down)
	return c.f.StartAgent(ctx, victim)
}

// settle waits until every capsule row agrees with its host (two
// reconcile intervals, plus one heartbeat for a host to come back), and
// returns how long that took.
func (c *chaos) settle(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	limit := 2*c.f.o.ReconcileInterval + 3*c.f.o.HeartbeatInterval + 5*time.Second
	var last error
	for time.Since(start) < limit {
		if last = c.consistent(ctx); last == nil {
			return time.Since(start), nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(start), fmt.Errorf("rows still disagree with hosts after %v: %w", limit, last)
}

// consistent checks that every host is online again and compares the
// store's capsules with what each agent holds.
func (c *chaos) consistent(ctx context.Context) error {
	hs, err := c.f.Hosts(ctx)
	if err != nil {
		return err
	}
	for _, h := range hs {
		if h.Status != "online" {
			return fmt.Errorf("host %s is %s", h.ID, h.Status)
		}
	}
	var page struct {
		Capsules []capsuleJSON `json:"capsules"`
	}
	if err := c.f.AdminDo(ctx, http.MethodGet, "/v1/admin/capsules?limit=1000", nil, &page); err != nil {
		return err
	}
	rows := map[string]capsuleJSON{}
	for _, r := range page.Capsules {
		rows[r.ID] = r
	}
	var bad []string
	onHosts := map[string]bool{}
	for _, a := range c.f.Agents {
		held, err := c.f.AgentCapsules(ctx, a.Index)
		if err != nil {
			return fmt.Errorf("agent %d: %w", a.Index, err)
		}
		for id, st := range held {
			onHosts[id] = true
			r, ok := rows[id]
			want := map[pb.CapsuleState]string{
				pb.CapsuleState_CAPSULE_STATE_RUNNING: "running", pb.CapsuleState_CAPSULE_STATE_PAUSED: "paused",
				pb.CapsuleState_CAPSULE_STATE_HIBERNATED: "hibernated", pb.CapsuleState_CAPSULE_STATE_STOPPED: "stopped",
			}[st]
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("%s on host %d but not in the store", id, a.Index))
			case r.HostID != a.HostID:
				bad = append(bad, fmt.Sprintf("%s on host %d, row says %s", id, a.Index, r.HostID))
			case want != "" && r.Status != want:
				bad = append(bad, fmt.Sprintf("%s is %s on host %d, row says %s", id, want, a.Index, r.Status))
			}
		}
	}
	for id, r := range rows {
		if !onHosts[id] && slices.Contains([]string{"running", "paused", "starting", "pending"}, r.Status) {
			bad = append(bad, fmt.Sprintf("%s is %s in the store but on no host", id, r.Status))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// destroyOnAgent destroys every capsule agent i holds, directly.
func (f *Fleet) destroyOnAgent(ctx context.Context, i int) {
	cl, secret, err := f.agentClient(i)
	if err != nil {
		return
	}
	held, err := f.AgentCapsules(ctx, i)
	if err != nil {
		return
	}
	for id := range held {
		req := connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})
		req.Header().Set(hostagent.SecretHeader, secret)
		_, _ = cl.DestroyCapsule(ctx, req)
	}
}

// agentClient is a client of agent i (mutual TLS) and the secret it wants.
func (f *Fleet) agentClient(i int) (hostagentv1connect.HostAgentServiceClient, string, error) {
	a := f.Agents[i]
	b, err := os.ReadFile(filepath.Join(a.Home, "agent", "control-plane.json"))
	if err != nil {
		return nil, "", err
	}
	var st struct {
		Credential string `json:"credential"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, "", err
	}
	cert, err := tls.LoadX509KeyPair(f.certs.clientCert, f.certs.clientKey)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	pool.AddCert(f.certs.ca)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}
	return hostagentv1connect.NewHostAgentServiceClient(hc, fmt.Sprintf("https://%s:50051", a.IP)), st.Credential, nil
}

// AgentCapsules asks agent i directly (mutual TLS, its credential) which
// capsules it holds and in what state.
func (f *Fleet) AgentCapsules(ctx context.Context, i int) (map[string]pb.CapsuleState, error) {
	cl, secret, err := f.agentClient(i)
	if err != nil {
		return nil, err
	}
	req := connect.NewRequest(&pb.ListCapsulesRequest{})
	req.Header().Set(hostagent.SecretHeader, secret)
	resp, err := cl.ListCapsules(ctx, req)
	if err != nil {
		return nil, err
	}
	out := map[string]pb.CapsuleState{}
	for _, cp := range resp.Msg.GetCapsules() {
		out[cp.GetCapsuleId()] = cp.GetState()
	}
	return out, nil
}

type keeper struct {
	id, path, sum string
}

// makeKeepers creates capsules holding a file of random data, records its
// checksum and pauses them to disk: whatever the faults, each must
// resume with the file intact.
func (c *chaos) makeKeepers(ctx context.Context) ([]keeper, error) {
	var ks []keeper
	for i := range c.o.Keepers {
		var cp capsuleJSON
		if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules", map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512, "timeout_sec": 3600}, &cp); err != nil {
			return nil, fmt.Errorf("keeper %d: %w", i, err)
		}
		k := keeper{id: cp.ID, path: "/root/keep.bin"}
		var r struct {
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
		}
		cmd := "head -c 3000000 /dev/urandom > " + k.path + " && sha256sum " + k.path
		if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+cp.ID+"/exec", map[string]any{"cmd": "sh", "args": []string{"-c", cmd}}, &r); err != nil || r.ExitCode != 0 {
			return nil, fmt.Errorf("keeper %d write: %+v %w", i, r, err)
		}
		k.sum, _, _ = strings.Cut(r.Stdout, " ")
		if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+cp.ID+"/pause", map[string]any{"to_disk": true}, nil); err != nil {
			return nil, fmt.Errorf("keeper %d pause to disk: %w", i, err)
		}
		ks = append(ks, k)
	}
	return ks, nil
}

func (c *chaos) checkKeepers(ctx context.Context, ks []keeper) {
	for _, k := range ks {
		if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+k.id+"/resume", map[string]any{}, nil); err != nil {
			c.problem("hibernated capsule %s did not resume: %v", k.id, err)
			continue
		}
		var r struct {
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
		}
		if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+k.id+"/exec", map[string]any{"cmd": "sha256sum", "args": []string{k.path}}, &r); err != nil || r.ExitCode != 0 {
			c.problem("hibernated capsule %s: read its file: %+v %v", k.id, r, err)
			continue
		}
		if got, _, _ := strings.Cut(r.Stdout, " "); got != k.sum {
			c.problem("hibernated capsule %s: file checksum %s, want %s", k.id, got, k.sum)
		}
	}
}

// Leaks counts what a fleet could leave on the host: capsule and agent
// namespaces, cgroups, links, mounts under its directory, loop devices
// backed by its files, nftables tables, processes running its binaries.
func Leaks(name, dir string) string {
	count := func(path, prefix string) int {
		es, _ := os.ReadDir(path)
		n := 0
		for _, e := range es {
			if strings.HasPrefix(e.Name(), prefix) {
				n++
			}
		}
		return n
	}
	cg := 0
	for _, r := range cgroupRoots() {
		cg += count(r, name)
	}
	links := 0
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], name) {
				links++
			}
		}
	}
	mounts := 0
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
				mounts++
			}
		}
	}
	loops := 0
	if out, err := exec.Command("losetup", "-l", "-n", "-O", "BACK-FILE").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), dir) {
				loops++
			}
		}
	}
	tables := 0
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], name) {
				tables++
			}
		}
	}
	procs := 0
	if es, err := os.ReadDir("/proc"); err == nil {
		for _, e := range es {
			if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(b), dir) {
				procs++
			}
		}
	}
	return fmt.Sprintf("netns=%d cgroups=%d links=%d mounts=%d loops=%d nft=%d procs=%d",
		count("/run/netns", name), cg, links, mounts, loops, tables, procs)
}

// startBuild starts build n of the run (a platform build: FROM minimal,
// one RUN step) through the API, retrying through the fault, and returns
// its id ("" when no replica took it before the fault ended).
func (c *chaos) startBuild(ctx context.Context, n int) string {
	body := map[string]any{
		"template_name": fmt.Sprintf("chaos-%d-%d", time.Now().Unix()%100000, n),
		"spec": map[string]any{
			"from": "minimal", "run": []string{"echo built > /built"}, "timeout_sec": 300,
			"memory_mb": 128, "disk_size_mb": 512,
		},
	}
	for !c.stop.Load() && ctx.Err() == nil {
		var b struct {
			ID string `json:"id"`
		}
		if err := c.do(ctx, http.MethodPost, "/v1/admin/builds", body, &b); err == nil {
			return b.ID
		}
		time.Sleep(500 * time.Millisecond)
	}
	return ""
}

// checkBuilds waits until every build started during the faults has
// ended: succeeded (its template starts a capsule whose file says so) or
// failed with a reason. A build left running or pending, or a failure
// without a reason, is a problem.
func (c *chaos) checkBuilds(ctx context.Context, ids []string) (last string) {
	type build struct {
		ID         string `json:"id"`
		Status     string `json:"status"`
		Error      string `json:"error"`
		TemplateID string `json:"template_id"`
	}
	deadline := time.Now().Add(c.o.BuildsEnd)
	for _, id := range ids {
		var b build
		for {
			var page struct {
				Builds []build `json:"builds"`
			}
			err := c.f.AdminDo(ctx, http.MethodGet, "/v1/admin/builds", nil, &page)
			if err == nil {
				for _, x := range page.Builds {
					if x.ID == id {
						b = x
					}
				}
			}
			if b.Status != "" && b.Status != "pending" && b.Status != "running" || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Second)
		}
		c.mu.Lock()
		c.rep.Builds[b.Status]++
		c.mu.Unlock()
		c.o.Log("build %s: %s %s", id, b.Status, b.Error)
		last = b.Status
		switch b.Status {
		case "succeeded":
			var cp capsuleJSON
			if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules", map[string]any{"template": b.TemplateID, "memory_mb": 128, "disk_size_mb": 512, "timeout_sec": 120}, &cp); err != nil {
				c.problem("build %s succeeded but its template %s starts no capsule: %v", id, b.TemplateID, err)
				continue
			}
			var r struct {
				Stdout string `json:"stdout"`
			}
			if err := c.f.AdminDo(ctx, http.MethodPost, "/v1/capsules/"+cp.ID+"/exec", map[string]any{"cmd": "cat", "args": []string{"/built"}}, &r); err != nil || strings.TrimSpace(r.Stdout) != "built" {
				c.problem("build %s: its template's capsule lacks the step's file: %q %v", id, r.Stdout, err)
			}
			_ = c.f.AdminDo(ctx, http.MethodDelete, "/v1/capsules/"+cp.ID, nil, nil)
		case "failed", "cancelled":
			if b.Error == "" {
				c.problem("build %s %s without a reason", id, b.Status)
			}
		default:
			c.problem("build %s still %q %v after the last fault", id, b.Status, c.o.BuildsEnd)
		}
	}
	return last
}
