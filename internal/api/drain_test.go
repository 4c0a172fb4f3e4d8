package api_test

import (
	"context"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestHostDrainAPI: POST /v1/admin/hosts/{id}/drain and /undrain are
// for platform admins, take a host out of scheduling and put it back, and
// GET shows the drain; an unknown host is a structured 404.
func TestHostDrainAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("drainadmin@example.com")
		e.makeAdmin(admin)
		user := e.signup("drainuser@example.com")
		hostID, cred := e.registerHost(admin, "127.0.0.1:50061", "")
		hb := map[string]any{"vcpus": 4, "memory_mb": 8192}

		e.want(e.do("POST", "/v1/admin/hosts/"+hostID+"/drain", user.token, nil), 403)
		if c := e.want(e.do("POST", "/v1/admin/hosts/nothost/drain", admin.token, nil), 404).str(t, "code"); c != "not_found" {
			t.Fatalf("bad host id: code %s", c)
		}
		e.want(e.do("POST", "/v1/admin/hosts/host-0000000000000000000000000/drain", admin.token, nil), 404)

		if got := e.want(e.do("GET", "/v1/admin/hosts/"+hostID, admin.token, nil), 200).json(t)["drain"]; got != nil {
			t.Fatalf("drain of an undrained host = %v, want none", got)
		}
		d := e.want(e.do("POST", "/v1/admin/hosts/"+hostID+"/drain", admin.token, nil), 200).json(t)["drain"].(map[string]any)
		if d["state"] != "draining" || d["left"] == nil {
			t.Fatalf("after drain: %v", d)
		}
		e.want(e.do("POST", "/v1/admin/hosts/"+hostID+"/drain", admin.token, nil), 200) // idempotent
		// Its agent hears it in the heartbeat answer (and empties its warm pools).
		if st := e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", cred, hb), 200).str(t, "status"); st != "draining" {
			t.Fatalf("heartbeat answer while draining: status %q", st)
		}
		g := e.want(e.do("GET", "/v1/admin/hosts/"+hostID, admin.token, nil), 200).json(t)["drain"].(map[string]any)
		if g["state"] != "draining" {
			t.Fatalf("GET while draining: %v", g)
		}
		hs, err := st.ListSchedulableHosts(context.Background(), "any", false)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if h.ID == hostID {
				t.Fatal("a draining host is still schedulable")
			}
		}
		if got := e.want(e.do("POST", "/v1/admin/hosts/"+hostID+"/undrain", admin.token, nil), 200).json(t)["drain"]; got != nil {
			t.Fatalf("after undrain: drain %v", got)
		}
		e.want(e.do("POST", "/v1/admin/hosts/"+hostID+"/undrain", admin.token, nil), 200)
		if st := e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", cred, hb), 200).str(t, "status"); st != "online" {
			t.Fatalf("heartbeat answer after undrain: status %q", st)
		}
	})
}
