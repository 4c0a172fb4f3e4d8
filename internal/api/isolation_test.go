package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestTeamIsolation proves team A can never read or touch team B's
// capsules, keys or templates, whatever credential A uses.
func TestTeamIsolation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("root@example.com")
		e.makeAdmin(admin)
		hostID, _ := e.registerHost(admin, "127.0.0.1:1", "")
		a := e.signup("alice@example.com")
		b := e.signup("bruno@example.com")
		aKey := e.apiKey(a, "a")
		bKey := e.apiKey(b, "b")

		bCap := e.insertCapsule(b.team, hostID)
		aCap := e.insertCapsule(a.team, hostID)
		bTmpl, err := st.CreateTemplate(context.Background(), store.Template{TeamID: b.team, Name: "bruno-private"})
		if err != nil {
			t.Fatal(err)
		}
		bKeys, err := st.ListAPIKeys(context.Background(), b.team)
		if err != nil || len(bKeys) != 1 {
			t.Fatalf("b keys: %v %v", bKeys, err)
		}
		bKeyID := bKeys[0].ID

		for _, cred := range []string{a.token, aKey} {
			// Lists show only A's things.
			caps := e.want(e.do("GET", "/v1/capsules", cred, nil), 200)
			if strings.Contains(string(caps.body), bCap.ID) || !strings.Contains(string(caps.body), aCap.ID) {
				t.Fatalf("A's capsule list: %s", caps.body)
			}
			keys := e.want(e.do("GET", "/v1/api-keys", cred, nil), 200)
			if strings.Contains(string(keys.body), bKeyID) {
				t.Fatalf("A sees B's key: %s", keys.body)
			}
			tmpls := e.want(e.do("GET", "/v1/templates", cred, nil), 200)
			if strings.Contains(string(tmpls.body), bTmpl.ID) || !strings.Contains(string(tmpls.body), "tpl-base") {
				t.Fatalf("A's templates: %s", tmpls.body)
			}
			// Every route on B's capsule is "not found" for A.
			for _, rt := range []struct{ method, path string }{
				{"GET", "/v1/capsules/" + bCap.ID},
				{"DELETE", "/v1/capsules/" + bCap.ID},
				{"POST", "/v1/capsules/" + bCap.ID + "/pause"},
				{"POST", "/v1/capsules/" + bCap.ID + "/resume"},
				{"PUT", "/v1/capsules/" + bCap.ID + "/public"},
				{"GET", "/v1/capsules/" + bCap.ID + "/metrics"},
				{"GET", "/v1/capsules/" + bCap.ID + "/processes"},
				{"DELETE", "/v1/capsules/" + bCap.ID + "/processes/1"},
				{"GET", "/v1/capsules/" + bCap.ID + "/files?path=/etc/passwd"},
				{"DELETE", "/v1/capsules/" + bCap.ID + "/files?path=/tmp"},
				{"GET", "/v1/capsules/" + bCap.ID + "/files/list?path=/"},
				{"GET", "/v1/templates/" + bTmpl.ID},
				{"DELETE", "/v1/api-keys/" + bKeyID},
				{"GET", "/v1/teams/" + b.team + "/members"},
				{"PATCH", "/v1/teams/" + b.team + "/"},
				{"DELETE", "/v1/teams/" + b.team + "/"},
				{"POST", "/v1/teams/" + b.team + "/invites"},
			} {
				var body any
				switch {
				case strings.HasSuffix(rt.path, "/public"):
					body = map[string]bool{"public": true}
				case rt.method == "PATCH":
					body = map[string]string{"name": "pwned"}
				case strings.HasSuffix(rt.path, "/invites"):
					body = map[string]string{"email": "x@example.com"}
				}
				r := e.do(rt.method, rt.path, cred, body)
				if r.status != http.StatusNotFound {
					t.Errorf("%s %s as A: status %d, want 404; body %s", rt.method, rt.path, r.status, r.body)
				}
			}
			// exec, timeout and mkdir with valid bodies.
			for _, rt := range []struct {
				path string
				body any
			}{
				{"/exec", map[string]any{"cmd": "id"}},
				{"/timeout", map[string]any{"timeout_sec": 60}},
				{"/files/mkdir", map[string]any{"path": "/tmp/x"}},
				{"/processes", map[string]any{"cmd": "sleep"}},
			} {
				if r := e.do("POST", "/v1/capsules/"+bCap.ID+rt.path, cred, rt.body); r.status != http.StatusNotFound {
					t.Errorf("POST %s as A: status %d, want 404", rt.path, r.status)
				}
			}
			if r := e.do("PUT", "/v1/capsules/"+bCap.ID+"/files?path=/tmp/x", cred, "data"); r.status != http.StatusNotFound && r.status != http.StatusUnsupportedMediaType {
				t.Errorf("PUT files as A: status %d", r.status)
			}
		}
		// Nothing of B's changed.
		if _, err := st.GetCapsule(context.Background(), b.team, bCap.ID); err != nil {
			t.Fatalf("B's capsule: %v", err)
		}
		if got, _ := st.ListAPIKeys(context.Background(), b.team); len(got) != 1 {
			t.Fatalf("B's keys: %v", got)
		}
		if tm, _ := st.GetTeam(context.Background(), b.team); strings.Contains(tm.Name, "pwned") {
			t.Fatalf("B's team renamed: %v", tm)
		}
		// And B still reaches its own capsule.
		e.want(e.do("GET", "/v1/capsules/"+bCap.ID, bKey, nil), 200)
	})
}
