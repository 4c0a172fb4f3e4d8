package controlplane_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// agentCapsules lists the capsule ids the host's agent runs.
func agentCapsules(t *testing.T, cl hostagentv1connect.HostAgentServiceClient) []string {
	t.Helper()
	resp, err := cl.ListCapsules(context.Background(), connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil {
		t.Fatalf("list capsules on the agent: %v", err)
	}
	var ids []string
	for _, c := range resp.Msg.GetCapsules() {
		ids = append(ids, c.GetCapsuleId())
	}
	return ids
}

// waitBuild polls the admin API until the build leaves pending/running.
func waitBuild(t *testing.T, c *cp, adminTok, id string, done func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	testutil.Eventually(t, time.Minute, func() bool {
		for _, b := range c.call("GET", "/v1/admin/builds", adminTok, nil, 200).obj(t)["builds"].([]any) {
			if m := b.(map[string]any); m["id"] == id {
				last = m
				return done(m)
			}
		}
		return false
	}, "build "+id+" did not reach the expected state")
	return last
}

func finished(m map[string]any) bool { return m["status"] != "pending" && m["status"] != "running" }

// TestTemplateBuilds runs real builds on a real agent with the container
// driver: a build that succeeds and whose template a capsule then uses, a
// failing step, a cancel during a long step, and a build left running by a
// control plane that died.
func TestTemplateBuilds(t *testing.T) {
	testutil.RequireRoot(t)
	for _, o := range apitest.Stores() {
		t.Run(o.Name, func(t *testing.T) {
			st := o.Open(t)
			c := startCP(t, st, func(cfg *controlplane.Config) {
				cfg.BuildInterval = 100 * time.Millisecond
				cfg.BuildPollInterval = 100 * time.Millisecond
			})
			ctx := testutil.Context(t, testutil.Long)
			adminTok, adminID, _ := c.signup("builds-admin@example.com")
			if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
				t.Fatal(err)
			}
			hostID, _ := startAgent(t, c, adminTok)
			host, err := st.GetHost(ctx, hostID)
			if err != nil {
				t.Fatal(err)
			}
			agent := c.srvAgent(host)
			userTok, _, userTeam := c.signup("builds-user@example.com")
			noBuildCapsules := func() bool {
				for _, id := range agentCapsules(t, agent) {
					if strings.HasPrefix(id, store.PrefixBuild+"-") {
						return false
					}
				}
				return true
			}
			res := map[string]any{"memory_mb": 128, "disk_size_mb": 512}
			spec := func(run ...string) map[string]any {
				s := map[string]any{"from": "minimal", "run": run}
				for k, v := range res {
					s[k] = v
				}
				return s
			}

			t.Run("succeeds", func(t *testing.T) {
				s := spec("echo one > /built-one", "mkdir -p /opt/tool && echo \"$GREETING from $(pwd)\" > /opt/tool/two")
				s["env"] = map[string]string{"GREETING": "hi"}
				s["workdir"] = "/tmp"
				b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{"template_name": "tools", "team_id": userTeam, "spec": s}, 201).obj(t)
				got := waitBuild(t, c, adminTok, b["id"].(string), finished)
				if got["status"] != "succeeded" || got["template_id"] == nil || got["error"] != nil {
					t.Fatalf("build = %v", got)
				}
				tmpl, err := st.GetTemplate(ctx, userTeam, got["template_id"].(string))
				if err != nil {
					t.Fatalf("template row: %v", err)
				}
				if tmpl.Name != "tools" || tmpl.Public || tmpl.TeamID != userTeam || tmpl.SizeBytes <= 0 {
					t.Fatalf("template = %+v", tmpl)
				}
				if tmpl.HostID != hostID {
					t.Fatalf("built template's host = %q, want the building host %s", tmpl.HostID, hostID)
				}
				if !noBuildCapsules() {
					t.Fatalf("build capsule left on the agent: %v", agentCapsules(t, agent))
				}
				// The team's capsule from the new template sees the files.
				capsule := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "tools", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
				if capsule["template_id"] != tmpl.ID {
					t.Fatalf("capsule template = %v, want %s", capsule["template_id"], tmpl.ID)
				}
				out := c.call("POST", "/v1/capsules/"+capsule["id"].(string)+"/exec", userTok,
					map[string]any{"cmd": "cat", "args": []string{"/built-one", "/opt/tool/two"}}, 200).obj(t)
				if out["stdout"] != "one\nhi from /tmp\n" || out["exit_code"] != float64(0) {
					t.Fatalf("exec in a capsule of the built template = %v", out)
				}
				c.call("DELETE", "/v1/capsules/"+capsule["id"].(string), userTok, nil, 204)

				// Another team cannot use it, and may build its own "tools":
				// on the host the two live under their ids and never collide.
				otherTok, _, otherTeam := c.signup("builds-other@example.com")
				c.call("POST", "/v1/capsules", otherTok, map[string]any{"template": tmpl.ID}, 404)
				ob := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{
					"template_name": "tools", "team_id": otherTeam, "spec": spec("echo other-team > /built-one"),
				}, 201).obj(t)
				if got := waitBuild(t, c, adminTok, ob["id"].(string), finished); got["status"] != "succeeded" {
					t.Fatalf("other team's build = %v", got)
				}
				for _, tc := range []struct{ tok, want string }{{userTok, "one\n"}, {otherTok, "other-team\n"}} {
					cl := c.call("POST", "/v1/capsules", tc.tok, map[string]any{"template": "tools", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
					out := c.call("POST", "/v1/capsules/"+cl["id"].(string)+"/exec", tc.tok, map[string]any{"cmd": "cat", "args": []string{"/built-one"}}, 200).obj(t)
					if out["stdout"] != tc.want {
						t.Errorf("team template \"tools\" holds %q, want %q", out["stdout"], tc.want)
					}
					c.call("DELETE", "/v1/capsules/"+cl["id"].(string), tc.tok, nil, 204)
				}
			})

			t.Run("template files follow the store", func(t *testing.T) {
				onHost := func() map[string]bool {
					lt, err := agent.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
					if err != nil {
						t.Fatal(err)
					}
					m := map[string]bool{}
					for _, tm := range lt.Msg.GetTemplates() {
						m[tm.GetName()] = true
					}
					return m
				}
				// An admin delete removes the built template's files from its host.
				b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{"template_name": "doomed", "team_id": userTeam, "spec": spec("echo x > /x")}, 201).obj(t)
				got := waitBuild(t, c, adminTok, b["id"].(string), finished)
				if got["status"] != "succeeded" {
					t.Fatalf("build = %v", got)
				}
				tid := got["template_id"].(string)
				if !onHost()[tid] {
					t.Fatalf("built template %s not on the host: %v", tid, onHost())
				}
				c.call("DELETE", "/v1/admin/templates/"+tid, adminTok, nil, 204)
				if onHost()[tid] {
					t.Fatalf("deleted template %s still on the host", tid)
				}

				// Files the store does not know: a team template's (id-shaped
				// name) is removed by the reconciler once settled; one built
				// on the host by hand is never touched, nor is a known one.
				capID := store.NewID(store.PrefixCapsule)
				if _, err := agent.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: capID, Template: "minimal", MemoryMb: 128, DiskSizeMb: 512})); err != nil {
					t.Fatal(err)
				}
				orphan, handmade := store.NewID(store.PrefixTemplate), "handmade-"+strings.ToLower(store.NewID("x"))
				for _, name := range []string{orphan, handmade} {
					if _, err := agent.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{CapsuleId: capID, Template: name})); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := agent.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: capID})); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					_, _ = agent.DeleteTemplate(context.Background(), connect.NewRequest(&pb.DeleteTemplateRequest{Template: handmade}))
				})
				if err := c.srv.ReconcileOnce(ctx); err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				if !onHost()[orphan] {
					t.Fatal("the reconciler deleted a template younger than its settle time")
				}
				restore := controlplane.SetReconcileSettle(time.Nanosecond)
				err := c.srv.ReconcileOnce(ctx)
				restore()
				if err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				h := onHost()
				if h[orphan] || !h[handmade] || !h["minimal"] {
					t.Fatalf("after reconcile the host has %v; want %s gone, %s and minimal kept", h, orphan, handmade)
				}
				known, err := st.ListTemplates(ctx, userTeam)
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range known {
					if k.HostID == hostID && !h[capsules.HostTemplateName(k)] {
						t.Errorf("the reconciler deleted %s (%s), which the store knows", k.Name, k.ID)
					}
				}
			})

			t.Run("failing step", func(t *testing.T) {
				b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{
					"template_name": "broken", "team_id": userTeam,
					"spec": spec("echo fine", "head -c 20000 /dev/zero | tr '\\0' x >&2; echo >&2; echo the-real-reason >&2; exit 7", "echo never > /never"),
				}, 201).obj(t)
				got := waitBuild(t, c, adminTok, b["id"].(string), finished)
				msg, _ := got["error"].(string)
				if got["status"] != "failed" || !strings.Contains(msg, "step 2/3") || !strings.Contains(msg, "exit code 7") ||
					!strings.Contains(msg, "the-real-reason") || len(msg) > 4096+300 || got["template_id"] != nil {
					t.Fatalf("build = %v", got)
				}
				if _, err := st.GetTemplateByName(ctx, userTeam, "broken"); err == nil {
					t.Fatal("a failed build left a template")
				}
				if !noBuildCapsules() {
					t.Fatalf("build capsule left on the agent: %v", agentCapsules(t, agent))
				}

				// A capsule of a build that has ended is an orphan: the
				// reconciler destroys it once it has settled.
				id := b["id"].(string)
				if _, err := agent.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
					CapsuleId: id, Template: "minimal", MemoryMb: 128, DiskSizeMb: 512,
					Labels: map[string]string{builds.LabelBuild: id, builds.LabelTeam: userTeam},
				})); err != nil {
					t.Fatal(err)
				}
				if err := c.srv.ReconcileOnce(ctx); err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				if slices.Index(agentCapsules(t, agent), id) < 0 {
					t.Fatal("the reconciler destroyed a capsule younger than its settle time")
				}
				restore := controlplane.SetReconcileSettle(time.Nanosecond)
				err := c.srv.ReconcileOnce(ctx)
				restore()
				if err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				if !noBuildCapsules() {
					t.Fatalf("the reconciler left an ended build's capsule: %v", agentCapsules(t, agent))
				}
			})

			t.Run("cancel during a long step", func(t *testing.T) {
				b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{
					"template_name": "slow", "team_id": userTeam, "spec": spec("sleep 30", "echo never"),
				}, 201).obj(t)
				id := b["id"].(string)
				waitBuild(t, c, adminTok, id, func(m map[string]any) bool {
					msg, _ := m["error"].(string)
					return m["status"] == "running" && strings.Contains(msg, "step 1/2")
				})
				// The reconciler leaves a running build's capsule alone, even
				// past its settle time.
				restore := controlplane.SetReconcileSettle(time.Nanosecond)
				err := c.srv.ReconcileOnce(ctx)
				restore()
				if err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				if slices.Index(agentCapsules(t, agent), id) < 0 {
					t.Fatal("the reconciler destroyed a running build's capsule")
				}
				start := time.Now()
				c.call("POST", "/v1/admin/builds/"+id+"/cancel", adminTok, nil, 200)
				testutil.Eventually(t, 10*time.Second, noBuildCapsules, "the cancelled build's capsule is still on the agent")
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("cancel took %v to destroy the capsule", d)
				}
				got := waitBuild(t, c, adminTok, id, finished)
				if got["status"] != "cancelled" {
					t.Fatalf("build = %v", got)
				}
				if _, err := st.GetTemplateByName(ctx, userTeam, "slow"); err == nil {
					t.Fatal("a cancelled build left a template")
				}
			})

			t.Run("timeout", func(t *testing.T) {
				sp := spec("sleep 30")
				sp["timeout_sec"] = 1
				b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{"template_name": "late", "team_id": userTeam, "spec": sp}, 201).obj(t)
				got := waitBuild(t, c, adminTok, b["id"].(string), finished)
				if msg, _ := got["error"].(string); got["status"] != "failed" || !strings.Contains(msg, "timed out after 1s") {
					t.Fatalf("build = %v", got)
				}
				if !noBuildCapsules() {
					t.Fatalf("the timed-out build's capsule is still on the agent: %v", agentCapsules(t, agent))
				}
			})

			t.Run("interrupted by a dead control plane", func(t *testing.T) {
				// A build claimed by a control plane that died: running in the
				// store, its capsule still on the agent.
				bl, err := st.CreateBuild(ctx, store.Build{
					ID: store.NewID(store.PrefixBuild), TeamID: userTeam, TemplateName: "orphan", Status: store.BuildPending,
					Spec: []byte(`{"from":"minimal","run":["true"],"timeout_sec":1}`),
				})
				if err != nil {
					t.Fatal(err)
				}
				if ok, err := st.UpdateBuildStatus(ctx, userTeam, bl.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "claimed", ""); err != nil || !ok {
					t.Fatalf("claim: %v %v", ok, err)
				}
				if _, err := agent.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
					CapsuleId: bl.ID, Template: "minimal", MemoryMb: 128, DiskSizeMb: 512,
					Labels: map[string]string{builds.LabelBuild: bl.ID, builds.LabelTeam: userTeam},
				})); err != nil {
					t.Fatal(err)
				}
				r := builds.New(builds.Config{
					Store: st, Agents: agentsFunc(c.srvAgent), Scheduler: scheduler.New(st), Logger: logger(),
					StaleAfter: 100 * time.Millisecond,
				})
				time.Sleep(300 * time.Millisecond) // past StaleAfter: nobody touched it
				if err := r.Pass(ctx); err != nil {
					t.Fatal(err)
				}
				r.Wait()
				got, err := st.GetBuild(ctx, userTeam, bl.ID)
				if err != nil || got.Status != store.BuildFailed || got.Error != builds.MsgInterrupted {
					t.Fatalf("build = %+v, %v", got, err)
				}
				if !noBuildCapsules() {
					t.Fatalf("the interrupted build's capsule is still on the agent: %v", agentCapsules(t, agent))
				}
			})
		})
	}
}

// agentsFunc adapts the server's agent clients to builds.Agents.
type agentsFunc func(store.Host) hostagentv1connect.HostAgentServiceClient

func (f agentsFunc) Client(h store.Host) hostagentv1connect.HostAgentServiceClient { return f(h) }

// TestBuildInterruptedByShutdown: a runner whose control plane shuts down
// mid-step records its build as interrupted and destroys the capsule
// before Run returns.
func TestBuildInterruptedByShutdown(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, func(cfg *controlplane.Config) { cfg.DisableBuildRunner = true })
	ctx := testutil.Context(t, testutil.Long)
	adminTok, adminID, _ := c.signup("shutdown-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	hostID, _ := startAgent(t, c, adminTok)
	host, err := st.GetHost(ctx, hostID)
	if err != nil {
		t.Fatal(err)
	}
	b := c.call("POST", "/v1/admin/builds", adminTok, map[string]any{
		"template_name": "long", "spec": map[string]any{"from": "minimal", "run": []string{"sleep 30"}, "memory_mb": 128, "disk_size_mb": 512},
	}, 201).obj(t)
	id := b["id"].(string)
	r := builds.New(builds.Config{
		Store: st, Agents: agentsFunc(c.srvAgent), Scheduler: scheduler.New(st), Logger: logger(),
		PollInterval: 100 * time.Millisecond,
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(rctx, 50*time.Millisecond) }()
	waitBuild(t, c, adminTok, id, func(m map[string]any) bool {
		msg, _ := m["error"].(string)
		return m["status"] == "running" && strings.Contains(msg, "step 1/1")
	})
	stop()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	got, err := st.GetBuild(ctx, store.PlatformTeamID, id)
	if err != nil || got.Status != store.BuildFailed || got.Error != builds.MsgInterrupted {
		t.Fatalf("build = %s %q, %v", got.Status, got.Error, err)
	}
	if ids := agentCapsules(t, c.srvAgent(host)); slices.Index(ids, id) >= 0 {
		t.Fatalf("the interrupted build's capsule is still on the agent: %v", ids)
	}
}
