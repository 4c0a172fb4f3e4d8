package controlplane_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// listingAgent answers ListCapsules, PingCapsule and ListTemplates from a
// fixed set of capsules: the part of an agent the reconciler talks to.
type listingAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	mu   sync.Mutex
	caps map[string]pb.CapsuleState
}

func (a *listingAgent) ListCapsules(context.Context, *connect.Request[pb.ListCapsulesRequest]) (*connect.Response[pb.ListCapsulesResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &pb.ListCapsulesResponse{}
	for id, st := range a.caps {
		out.Capsules = append(out.Capsules, &pb.Capsule{CapsuleId: id, State: st, CreatedAt: time.Now().Unix()})
	}
	return connect.NewResponse(out), nil
}

func (a *listingAgent) PingCapsule(_ context.Context, req *connect.Request[pb.PingCapsuleRequest]) (*connect.Response[pb.PingCapsuleResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.caps[req.Msg.GetCapsuleId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such capsule"))
	}
	return connect.NewResponse(&pb.PingCapsuleResponse{State: st}), nil
}

func (a *listingAgent) ListTemplates(context.Context, *connect.Request[pb.ListTemplatesRequest]) (*connect.Response[pb.ListTemplatesResponse], error) {
	return connect.NewResponse(&pb.ListTemplatesResponse{}), nil
}

// TestReturningHostIsReconciledAtOnce: capsules left starting by creates
// an agent lost (it restarted) are resolved as soon as the agent
// heartbeats with its new start time — not after a settle timer and not
// at the next periodic pass (an hour here) — while a capsule the agent
// does run follows the agent and a create that began after the agent's
// start is left to finish.
func TestReturningHostIsReconciledAtOnce(t *testing.T) {
	for _, o := range apitest.Stores() {
		t.Run(o.Name, func(t *testing.T) {
			st := o.Open(t)
			c := startCP(t, st, func(cfg *controlplane.Config) { cfg.HeartbeatInterval = time.Hour })
			ctx := context.Background()
			agent := &listingAgent{caps: map[string]pb.CapsuleState{}}
			_, h := hostagentv1connect.NewHostAgentServiceHandler(agent)
			mux := httptest.NewServer(h)
			defer mux.Close()

			adminTok, adminID, _ := c.signup("admin@example.com")
			if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
				t.Fatal(err)
			}
			tok := c.call("POST", "/v1/admin/hosts/tokens", adminTok, map[string]any{}, 201).obj(t)["token"].(string)
			hl := &hostlink.Client{BaseURL: c.url}
			usage := func(started time.Time) hostlink.Usage {
				return hostlink.Usage{
					Address: mux.Listener.Addr().String(), VCPUs: 2, MemoryMB: 4096, DiskMB: 10000,
					Capabilities: &hostlink.Capabilities{Runtimes: []string{"container"}, StartedAt: started},
				}
			}
			reg, err := hl.Register(ctx, tok, usage(time.Now().Add(-time.Hour)))
			if err != nil {
				t.Fatal(err)
			}
			_, _, team := c.signup("user@example.com")
			mk := func(status store.CapsuleStatus) store.Capsule {
				cp, err := st.CreateCapsule(ctx, store.Capsule{
					ID: store.NewID(store.PrefixCapsule), TeamID: team, TemplateID: "tpl-base", HostID: reg.HostID,
					Status: status, VCPUs: 1, MemoryMB: 128, DiskSizeMB: 512, TimeoutSec: 600, AccessTokenHash: auth.HashToken("x"),
				})
				if err != nil {
					t.Fatal(err)
				}
				return cp
			}
			// Creates in flight when the agent was killed.
			ghost, ghostPending, adopted := mk(store.CapsuleStarting), mk(store.CapsulePending), mk(store.CapsuleStarting)
			agent.mu.Lock()
			agent.caps[adopted.ID] = pb.CapsuleState_CAPSULE_STATE_RUNNING // the agent finished this one
			agent.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
			restarted := time.Now()
			time.Sleep(10 * time.Millisecond)
			fresh := mk(store.CapsuleStarting) // a create begun after the restart, not yet at the agent

			start := time.Now()
			if _, err := hl.Heartbeat(ctx, reg.HostID, reg.Credential, usage(restarted)); err != nil {
				t.Fatal(err)
			}
			want := map[string]store.CapsuleStatus{
				ghost.ID: store.CapsuleError, ghostPending.ID: store.CapsuleError, adopted.ID: store.CapsuleRunning,
			}
			for {
				done := true
				for id, w := range want {
					if got, _ := st.GetCapsule(ctx, team, id); got.Status != w {
						done = false
					}
				}
				if done {
					break
				}
				if time.Since(start) > 10*time.Second {
					for id, w := range want {
						got, _ := st.GetCapsule(ctx, team, id)
						t.Errorf("capsule %s: %s, want %s", id, got.Status, w)
					}
					t.Fatal("the returning host was not reconciled at once")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got, _ := st.GetCapsule(ctx, team, fresh.ID); got.Status != store.CapsuleStarting {
				t.Errorf("a create begun after the agent's start is %s, want it left starting", got.Status)
			}
			// The admin API shows what the host reported.
			hj := c.call("GET", "/v1/admin/hosts/"+reg.HostID, adminTok, nil, 200).obj(t)
			caps, _ := hj["capabilities"].(map[string]any)
			if rt, _ := caps["runtimes"].([]any); len(rt) != 1 || rt[0] != "container" || caps["agent_started_at"] == nil {
				t.Errorf("host capabilities: %v", hj["capabilities"])
			}
		})
	}
}

// ratioAgent is a listingAgent whose GetHostInfo reports overcommit
// ratios, as `wrenn agent --cpu-overcommit …` does.
type ratioAgent struct{ listingAgent }

func (a *ratioAgent) GetHostInfo(context.Context, *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	return connect.NewResponse(&pb.GetHostInfoResponse{
		Driver: "container", CpuOvercommit: 32, MemoryOvercommit: 2, DiskOvercommit: 4,
		MemorySnapshotsReason: "criu check failed: no criu", StartedAt: time.Now().Unix(),
		Isolations: []*pb.IsolationSupport{
			{Name: "container", Available: true},
			{Name: "microvm", Available: true, Backend: "qemu"},
			{Name: "gvisor", Reason: "runsc is not configured"},
		},
		DefaultIsolation: "container",
	}), nil
}

// TestAgentRatiosRecordedFromHostInfo: a standalone agent's ratios (it has
// no heartbeat to carry them) reach the store through the reconciler's
// GetHostInfo, and the scheduler's view (admin API) shows them.
func TestAgentRatiosRecordedFromHostInfo(t *testing.T) {
	st := apitest.Stores()[0].Open(t)
	c := startCP(t, st, nil)
	ctx := context.Background()
	agent := &ratioAgent{listingAgent{caps: map[string]pb.CapsuleState{}}}
	_, h := hostagentv1connect.NewHostAgentServiceHandler(agent)
	srv := httptest.NewServer(h)
	defer srv.Close()
	adminTok, adminID, _ := c.signup("admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	tok := c.call("POST", "/v1/admin/hosts/tokens", adminTok, map[string]any{}, 201).obj(t)["token"].(string)
	reg, err := (&hostlink.Client{BaseURL: c.url}).Register(ctx, tok, hostlink.Usage{Address: srv.Listener.Addr().String(), VCPUs: 2, MemoryMB: 4096, DiskMB: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.srv.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	caps := c.call("GET", "/v1/admin/hosts/"+reg.HostID, adminTok, nil, 200).obj(t)["capabilities"].(map[string]any)
	oc := caps["overcommit"].(map[string]any)
	free := caps["free"].(map[string]any)
	ms := caps["memory_snapshots"].(map[string]any)
	if oc["cpu"] != 32.0 || oc["memory"] != 2.0 || oc["disk"] != 4.0 || free["vcpus"] != 64.0 || ms["available"] != false || ms["reason"] != "criu check failed: no criu" {
		t.Fatalf("capabilities after reconcile: %v", caps)
	}
	// The isolations it runs, and why not gVisor (what the scheduler
	// places by).
	isos, _ := caps["isolations"].([]any)
	sup, _ := caps["isolation_support"].([]any)
	if len(isos) != 2 || isos[0] != "container" || isos[1] != "microvm" || len(sup) != 3 || caps["default_isolation"] != "container" {
		t.Fatalf("isolations after reconcile: %v / %v", caps["isolations"], caps["isolation_support"])
	}
	if vm := sup[1].(map[string]any); vm["backend"] != "qemu" || vm["kvm"] != nil {
		t.Fatalf("microvm support: %v", vm)
	}
	if gv := sup[2].(map[string]any); gv["available"] != false || gv["reason"] != "runsc is not configured" {
		t.Fatalf("gvisor support: %v", gv)
	}
}
