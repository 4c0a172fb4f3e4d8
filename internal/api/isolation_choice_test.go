package api_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestIsolationSettingsAPI: a team admin sets and clears the team's
// default isolation (PATCH /v1/teams/{id}) and a template's (PATCH
// /v1/templates/{id}), a platform admin the team's (PATCH
// /v1/admin/teams/{id}); unknown names are 400 naming the known ones and
// change nothing; a team member is 403.
func TestIsolationSettingsAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		u := e.signup("iso@example.com")
		teamPath := "/v1/teams/" + u.team
		if got := e.want(e.do("PATCH", teamPath, u.token, map[string]any{"default_isolation": "gvisor"}), 200).json(t); got["default_isolation"] != "gvisor" {
			t.Fatalf("team patch = %v", got)
		}
		r := e.want(e.do("PATCH", teamPath, u.token, map[string]any{"default_isolation": "kvm"}), 400)
		if !strings.Contains(string(r.body), "container, gvisor, microvm") {
			t.Fatalf("unknown isolation: %s", r.body)
		}
		if tm, _ := st.GetTeam(ctx, u.team); tm.DefaultIsolation != "gvisor" {
			t.Fatalf("refused patch changed the default: %q", tm.DefaultIsolation)
		}
		member := e.signup("iso-member@example.com")
		if _, err := st.AddTeamMember(ctx, u.team, member.id, store.RoleMember); err != nil {
			t.Fatal(err)
		}
		sw := e.want(e.do("POST", teamPath+"/switch", member.token, nil), 200).str(t, "token")
		e.want(e.do("PATCH", teamPath, sw, map[string]any{"default_isolation": "container"}), 403)

		admin := e.signup("iso-admin@example.com")
		e.makeAdmin(admin)
		got := e.want(e.do("PATCH", "/v1/admin/teams/"+u.team, admin.token, map[string]any{"default_isolation": "microvm"}), 200).json(t)
		if got["default_isolation"] != "microvm" {
			t.Fatalf("admin patch = %v", got)
		}
		e.want(e.do("PATCH", "/v1/admin/teams/"+u.team, admin.token, map[string]any{"default_isolation": "vm"}), 400)
		if got := e.want(e.do("PATCH", teamPath, u.token, map[string]any{"default_isolation": ""}), 200).json(t); got["default_isolation"] != nil {
			t.Fatalf("cleared team default still returned: %v", got)
		}

		tpl, err := st.CreateTemplate(ctx, store.Template{TeamID: u.team, Name: "isotpl"})
		if err != nil {
			t.Fatal(err)
		}
		tplPath := "/v1/templates/" + tpl.ID
		if got := e.want(e.do("PATCH", tplPath, u.token, map[string]any{"isolation": "gvisor"}), 200).json(t); got["isolation"] != "gvisor" || got["capsule_internet"] != nil {
			t.Fatalf("template patch = %v", got)
		}
		e.want(e.do("PATCH", tplPath, u.token, map[string]any{"isolation": "runc"}), 400)
		e.want(e.do("PATCH", tplPath, u.token, map[string]any{"isolation": 1}), 400)
		if got := e.want(e.do("GET", tplPath, u.token, nil), 200).json(t); got["isolation"] != "gvisor" {
			t.Fatalf("template get = %v", got)
		}
		if got := e.want(e.do("PATCH", tplPath, u.token, map[string]any{"isolation": ""}), 200).json(t); got["isolation"] != nil {
			t.Fatalf("cleared template isolation still returned: %v", got)
		}
	})
}

// TestCreateIsolationErrorsAPI: an unknown isolation is 400
// invalid_argument; one no host runs is 422 isolation_unavailable naming
// the hosts' reason and what they run; the host's capabilities list each
// isolation with its reason.
func TestCreateIsolationErrorsAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		u := e.signup("iso-create@example.com")
		if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken("iso"), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		h, err := st.RegisterHost(ctx, auth.HashToken("iso"), store.Host{ID: store.NewID(store.PrefixHost), Address: "127.0.0.1:1", VCPUs: 8, MemoryMB: 16384})
		if err != nil {
			t.Fatal(err)
		}
		caps, _ := json.Marshal(hostlink.Capabilities{Isolations: []string{"container"}, IsolationSupport: []hostlink.IsolationSupport{
			{Name: "container", Available: true},
			{Name: "gvisor", Reason: "runsc is not configured"},
			{Name: "microvm", Reason: "/dev/kvm is missing"},
		}})
		if err := st.SetHostCapabilities(ctx, h.ID, store.HostUsage{Capabilities: string(caps)}); err != nil {
			t.Fatal(err)
		}
		r := e.want(e.do("POST", "/v1/capsules", u.token, map[string]any{"template": "minimal", "isolation": "gvisor"}), 422)
		body := r.json(t)
		if body["code"] != "isolation_unavailable" || !strings.Contains(body["message"].(string), "runsc is not configured") || !strings.Contains(body["message"].(string), "available: container") {
			t.Fatalf("gvisor create: %s", r.body)
		}
		r = e.want(e.do("POST", "/v1/capsules", u.token, map[string]any{"template": "minimal", "isolation": "firecracker"}), 400)
		if body := r.json(t); body["code"] != "invalid_argument" {
			t.Fatalf("unknown isolation: %s", r.body)
		}
		admin := e.signup("iso-hosts@example.com")
		e.makeAdmin(admin)
		hosts := e.want(e.do("GET", "/v1/admin/hosts", admin.token, nil), 200).json(t)["hosts"].([]any)
		var support []any
		for _, x := range hosts {
			if m := x.(map[string]any); m["id"] == h.ID {
				c := m["capabilities"].(map[string]any)
				support, _ = c["isolation_support"].([]any)
				if iso, _ := c["isolations"].([]any); len(iso) != 1 || iso[0] != "container" {
					t.Fatalf("isolations = %v", c["isolations"])
				}
			}
		}
		if len(support) != 3 || support[1].(map[string]any)["reason"] != "runsc is not configured" || support[1].(map[string]any)["available"] != false {
			t.Fatalf("isolation_support = %v", support)
		}
	})
}
