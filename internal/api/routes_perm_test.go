package api_test

import (
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestEveryAdminRouteNeedsAdmin enumerates the router with chi.Walk, so a
// route added later cannot be forgotten: every route under /v1/admin
// answers 401 without credentials and 403 to a signed-in non-admin (by
// session and by API key), WebSocket routes included (the requests carry
// a genuine handshake so the WebSocket middleware reaches its checks).
// Path parameters are filled with real IDs, so a route that forgot the
// admin check would act on real data and answer something else.
func TestEveryAdminRouteNeedsAdmin(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		root := e.signup("root@example.com")
		e.makeAdmin(root)
		member := e.signup("member@example.com")
		memberKey := e.apiKey(member, "k")
		hostID, _ := e.registerHost(root, "127.0.0.1:1", "")
		c := e.insertCapsule(root.team, hostID)
		b, err := st.CreateBuild(t.Context(), store.Build{ID: store.NewID(store.PrefixBuild), TeamID: root.team, TemplateName: "x", Status: store.BuildPending, Spec: []byte(`{"run":["true"]}`)})
		if err != nil {
			t.Fatal(err)
		}
		tpl, err := st.CreateTemplate(t.Context(), store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: root.team, Name: "probe"})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]string{
			"userID": root.id, "teamID": root.team, "capsuleID": c.ID, "hostID": hostID,
			"templateID": tpl.ID, "buildID": b.ID, "keyID": "key-x", "pid": "1", "inviteID": "inv-x",
		}

		router := e.api.Routes()
		type route struct{ method, pattern string }
		var admin []route
		err = chi.Walk(router, func(method, pattern string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
			if strings.HasPrefix(pattern, "/v1/admin/") || pattern == "/v1/admin" {
				admin = append(admin, route{method, pattern})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		sort.Slice(admin, func(i, j int) bool { return admin[i].pattern+admin[i].method < admin[j].pattern+admin[j].method })
		if len(admin) < 20 {
			t.Fatalf("only %d admin routes found: %v", len(admin), admin)
		}

		param := regexp.MustCompile(`\{([^}:]+)(:[^}]*)?\}`)
		var checked []string
		for _, rt := range admin {
			path := param.ReplaceAllStringFunc(rt.pattern, func(m string) string {
				name := param.FindStringSubmatch(m)[1]
				if v, ok := ids[name]; ok {
					return v
				}
				t.Fatalf("route %s %s: no test value for parameter %q; add one to ids", rt.method, rt.pattern, name)
				return ""
			})
			path = strings.TrimSuffix(strings.ReplaceAll(path, "/*", "/x"), "/")
			var body any
			if rt.method == http.MethodPost || rt.method == http.MethodPut || rt.method == http.MethodPatch {
				body = map[string]any{}
			}
			var hdr []string
			if rt.method == http.MethodGet {
				hdr = []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version", "13"}
			}
			for _, tc := range []struct {
				who, cred string
				want      int
			}{
				{"anonymous", "", http.StatusUnauthorized},
				{"member session", member.token, http.StatusForbidden},
				{"member API key", memberKey, http.StatusForbidden},
			} {
				r := e.do(rt.method, path, tc.cred, body, hdr...)
				if r.status != tc.want {
					t.Errorf("%s %s as %s: status %d, want %d; body %s", rt.method, path, tc.who, r.status, tc.want, r.body)
				}
			}
			// The admin passes the check (whatever the handler then says;
			// WebSocket routes answer 400 to a plain request).
			if r := e.do(rt.method, path, root.token, body); r.status == http.StatusUnauthorized || r.status == http.StatusForbidden {
				t.Errorf("%s %s as admin: status %d; body %s", rt.method, path, r.status, r.body)
			}
			checked = append(checked, rt.method+" "+rt.pattern)
		}
		t.Logf("checked %d admin routes:\n%s", len(checked), strings.Join(checked, "\n"))
		if _, err := st.GetUser(t.Context(), root.id); err != nil {
			t.Fatalf("admin user damaged by the probes: %v", err)
		}
	})
}
