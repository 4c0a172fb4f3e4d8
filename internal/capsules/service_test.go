package capsules_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// agent is a host agent that answers the life-cycle RPCs from its fields.
type agent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	mu        sync.Mutex
	createErr error
	pauseErr  error
	expiresAt int64 // CreateCapsule answers this expiry (unix seconds; 0: none)
	gone      bool  // PingCapsule answers not found
	created   []*pb.CreateCapsuleRequest
	onResume  func() // runs inside ResumeCapsule (e.g. a reconciler moving the row)
	// UpdateCapsuleNetwork (network_test.go)
	netUpdates []*pb.UpdateCapsuleNetworkRequest
	netErr     error
	// Life cycle (sleep_test.go): pauses and resumes seen, a resume's
	// delay and error, snapshots made.
	pauses      []*pb.PauseCapsuleRequest
	resumes     []*pb.ResumeCapsuleRequest
	resumeDelay time.Duration
	resumeErr   error
	snapshots   []*pb.CreateSnapshotRequest
}

func (a *agent) ResumeCapsule(_ context.Context, r *connect.Request[pb.ResumeCapsuleRequest]) (*connect.Response[pb.ResumeCapsuleResponse], error) {
	a.mu.Lock()
	a.resumes = append(a.resumes, r.Msg)
	d, rerr := a.resumeDelay, a.resumeErr
	a.mu.Unlock()
	time.Sleep(d)
	if rerr != nil {
		return nil, rerr
	}
	if a.onResume != nil {
		a.onResume()
	}
	return connect.NewResponse(&pb.ResumeCapsuleResponse{Capsule: &pb.Capsule{CapsuleId: r.Msg.GetCapsuleId(), State: pb.CapsuleState_CAPSULE_STATE_RUNNING}}), nil
}

func (a *agent) CreateCapsule(_ context.Context, r *connect.Request[pb.CreateCapsuleRequest]) (*connect.Response[pb.CreateCapsuleResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.created = append(a.created, r.Msg)
	if a.createErr != nil {
		return nil, a.createErr
	}
	// A capsule of a team template (a fork's base, named by id) is
	// "restored" with its processes.
	fromMemory := strings.HasPrefix(r.Msg.GetTemplate(), store.PrefixTemplate+"-")
	return connect.NewResponse(&pb.CreateCapsuleResponse{Capsule: &pb.Capsule{CapsuleId: r.Msg.GetCapsuleId(), MemoryKept: fromMemory, ExpiresAt: a.expiresAt}}), nil
}

func (a *agent) PauseCapsule(_ context.Context, r *connect.Request[pb.PauseCapsuleRequest]) (*connect.Response[pb.PauseCapsuleResponse], error) {
	a.mu.Lock()
	a.pauses = append(a.pauses, r.Msg)
	a.mu.Unlock()
	if a.pauseErr != nil {
		return nil, a.pauseErr
	}
	st := pb.CapsuleState_CAPSULE_STATE_PAUSED
	if r.Msg.GetToDisk() {
		st = pb.CapsuleState_CAPSULE_STATE_HIBERNATED
	}
	return connect.NewResponse(&pb.PauseCapsuleResponse{Capsule: &pb.Capsule{CapsuleId: r.Msg.GetCapsuleId(), State: st}, MemoryKept: true}), nil
}

func (a *agent) GetHostInfo(context.Context, *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	return connect.NewResponse(&pb.GetHostInfoResponse{MemorySnapshots: true}), nil
}

func (a *agent) CreateSnapshot(_ context.Context, r *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	a.mu.Lock()
	a.snapshots = append(a.snapshots, r.Msg)
	a.mu.Unlock()
	return connect.NewResponse(&pb.CreateSnapshotResponse{SizeBytes: 1 << 20, Memory: r.Msg.GetMemory()}), nil
}

func (a *agent) PingCapsule(context.Context, *connect.Request[pb.PingCapsuleRequest]) (*connect.Response[pb.PingCapsuleResponse], error) {
	if a.gone {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	return connect.NewResponse(&pb.PingCapsuleResponse{State: pb.CapsuleState_CAPSULE_STATE_RUNNING}), nil
}

func (a *agent) DestroyCapsule(context.Context, *connect.Request[pb.DestroyCapsuleRequest]) (*connect.Response[pb.DestroyCapsuleResponse], error) {
	return connect.NewResponse(&pb.DestroyCapsuleResponse{}), nil
}

type agentsFunc func(store.Host) hostagentv1connect.HostAgentServiceClient

func (f agentsFunc) Client(h store.Host) hostagentv1connect.HostAgentServiceClient { return f(h) }

// placer counts placements that were never released.
type placer struct {
	*scheduler.Scheduler
	mu   sync.Mutex
	held map[string]bool
}

func (p *placer) Pick(ctx context.Context, team store.Team, req scheduler.Request) (store.Host, error) {
	h, err := p.Scheduler.Pick(ctx, team, req)
	if err == nil {
		p.mu.Lock()
		p.held[req.CapsuleID] = true
		p.mu.Unlock()
	}
	return h, err
}

func (p *placer) Release(hostID, id string) {
	p.mu.Lock()
	delete(p.held, id)
	p.mu.Unlock()
	p.Scheduler.Release(hostID, id)
}

type fixture struct {
	st    store.Store
	svc   *capsules.Service
	ag    *agent
	pl    *placer
	scope capsules.Scope
	cfg   capsules.Config
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Short)
	ag := &agent{}
	mux := http.NewServeMux()
	mux.Handle(hostagentv1connect.NewHostAgentServiceHandler(ag))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	team, err := st.CreateTeam(ctx, store.Team{Name: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken("t"), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RegisterHost(ctx, auth.HashToken("t"), store.Host{ID: store.NewID(store.PrefixHost), Address: ln.Addr().String(), VCPUs: 8, MemoryMB: 16384}); err != nil {
		t.Fatal(err)
	}
	pl := &placer{Scheduler: scheduler.New(st), held: map[string]bool{}}
	cfg := capsules.Config{
		Store: st, Scheduler: pl, Audit: &audit.Recorder{Store: st},
		Agents: agentsFunc(func(h store.Host) hostagentv1connect.HostAgentServiceClient {
			return hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, "http://"+h.Address)
		}),
	}
	svc := capsules.New(cfg)
	return fixture{st: st, svc: svc, ag: ag, pl: pl, scope: capsules.TeamScope(team.ID, "", audit.Actor{Type: store.ActorSystem}), cfg: cfg}
}

func TestCreateAppliesDefaultsAndSendsAllowInternet(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Capsule
	if c.Status != store.CapsuleRunning || c.VCPUs != 1 || c.MemoryMB != 512 || c.DiskSizeMB != 5120 || c.TimeoutSec != 300 || !c.AllowInternet {
		t.Fatalf("created %+v; want running with the defaults and internet on", c)
	}
	off := false
	if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, AllowInternet: &off}); err != nil {
		t.Fatal(err)
	}
	if len(f.ag.created) != 2 || !f.ag.created[0].GetAllowInternet() || f.ag.created[1].GetAllowInternet() {
		t.Fatalf("agent got allow_internet %v, %v; want true, false", f.ag.created[0].GetAllowInternet(), f.ag.created[1].GetAllowInternet())
	}
}

func TestFailedCreateIsErrorWithReasonAndReleasesItsPlacement(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	f.ag.createErr = connect.NewError(connect.CodeFailedPrecondition, errString("template minimal is damaged"))
	tmpl := "minimal"
	_, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	var se *capsules.Error
	if !errors.As(err, &se) || se.Kind != capsules.KindConflict {
		t.Fatalf("err = %v; want a conflict", err)
	}
	caps, _, err := f.svc.List(ctx, f.scope, capsules.ListFilter{})
	if err != nil || len(caps) != 1 {
		t.Fatalf("list = %v, %v", caps, err)
	}
	if caps[0].Status != store.CapsuleError || caps[0].ErrorReason != "template minimal is damaged" {
		t.Fatalf("capsule %s, reason %q", caps[0].Status, caps[0].ErrorReason)
	}
	if len(f.pl.held) != 0 {
		t.Fatalf("placements still held: %v", f.pl.held)
	}
	// Invalid input never reaches the scheduler or the agent.
	big := int64(1)
	if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{MemoryMB: &big}); !errors.As(err, &se) || se.Kind != capsules.KindInvalid {
		t.Fatalf("memory 1 MB: %v", err)
	}
	if len(f.ag.created) != 1 {
		t.Fatalf("agent saw %d creates, want 1", len(f.ag.created))
	}
}

func TestFailedPauseOfAVanishedCapsuleMarksItError(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	f.ag.pauseErr = connect.NewError(connect.CodeInternal, errString("criu failed"))
	f.ag.gone = true
	if _, err := f.svc.Pause(ctx, f.scope, out.Capsule.ID, false); err == nil {
		t.Fatal("pause succeeded")
	}
	c, err := f.svc.Get(ctx, f.scope, out.Capsule.ID)
	if err != nil || c.Status != store.CapsuleError || c.ErrorReason == "" {
		t.Fatalf("after a failed pause of a vanished capsule: %s %q %v", c.Status, c.ErrorReason, err)
	}
	// Another team sees nothing; destroy forgets it and releases it.
	other := capsules.TeamScope("team-other", "", audit.Actor{Type: store.ActorSystem})
	if _, err := f.svc.Get(ctx, other, c.ID); err == nil {
		t.Fatal("another team sees the capsule")
	}
	if err := f.svc.Destroy(ctx, f.scope, c.ID, capsules.DestroyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Destroy(ctx, f.scope, c.ID, capsules.DestroyOptions{Force: true}); err == nil {
		t.Fatal("a team caller may force a destroy")
	}
	if len(f.pl.held) != 0 {
		t.Fatalf("placements still held: %v", f.pl.held)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// The reconciler copies what the agent says of a failed capsule (e.g. envd
// not answering) into error_reason, and a capsule whose agent reports it
// running again leaves error with the reason cleared.
func TestAlignKeepsTheAgentsReason(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	const why = "envd has not answered 10 metrics samples in a row"
	if ok, err := f.svc.Align(ctx, out.Capsule, store.CapsuleError, why); err != nil || !ok {
		t.Fatalf("align to error: %v %v", ok, err)
	}
	c, err := f.svc.Get(ctx, f.scope, out.Capsule.ID)
	if err != nil || c.Status != store.CapsuleError || c.ErrorReason != why {
		t.Fatalf("after align: %s %q %v", c.Status, c.ErrorReason, err)
	}
	if ok, err := f.svc.Align(ctx, c, store.CapsuleRunning, ""); err != nil || !ok {
		t.Fatalf("align back to running: %v %v", ok, err)
	}
	c, err = f.svc.Get(ctx, f.scope, out.Capsule.ID)
	if err != nil || c.Status != store.CapsuleRunning || c.ErrorReason != "" {
		t.Fatalf("after envd answers again: %s %q %v", c.Status, c.ErrorReason, err)
	}
}

// TestResumeWinsOverAConcurrentReconcile: the reconciler may move a paused
// capsule's row (paused → hibernated, as after an agent restart) while
// the agent resumes it; the resume's answer is what the agent just did,
// so the capsule ends running, not in a "changed state" conflict.
func TestResumeWinsOverAConcurrentReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Capsule
	if ok, err := f.svc.Align(ctx, c, store.CapsulePaused, ""); err != nil || !ok {
		t.Fatalf("pause row: %v %v", ok, err)
	}
	f.ag.onResume = func() {
		cur, err := f.st.GetCapsule(ctx, c.TeamID, c.ID)
		if err != nil {
			t.Error(err)
			return
		}
		if ok, err := f.svc.Align(ctx, cur, store.CapsuleHibernated, ""); err != nil || !ok {
			t.Errorf("reconciler move: %v %v", ok, err)
		}
	}
	res, err := f.svc.Resume(ctx, f.scope, c.ID, nil)
	if err != nil || res.Capsule.Status != store.CapsuleRunning {
		t.Fatalf("resume during a reconcile: %v, status %s", err, res.Capsule.Status)
	}
}
