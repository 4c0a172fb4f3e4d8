package api_test

import (
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestBadInputNever500 throws malformed requests at every kind of route:
// each must be a 4xx with {"code","message"}.
func TestBadInputNever500(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("fuzz@example.com")
		admin := e.signup("fuzzadmin@example.com")
		e.makeAdmin(admin)
		huge := `{"name":"` + strings.Repeat("x", 200<<10) + `"}`
		cl := "/v1/capsules/cl-0000000000000000"
		tests := []struct {
			name, method, path, cred string
			body                     any
			want                     int
			code                     string
		}{
			{"signup wrong type", "POST", "/v1/auth/signup", "", `{"email":1,"password":"abcdefghij"}`, 400, "invalid_argument"},
			{"signup unknown field", "POST", "/v1/auth/signup", "", `{"email":"a@b.co","password":"abcdefghij","admin":true}`, 400, "invalid_argument"},
			{"signup bad email", "POST", "/v1/auth/signup", "", `{"email":"not an email","password":"abcdefghij"}`, 400, "invalid_argument"},
			{"signup short password", "POST", "/v1/auth/signup", "", `{"email":"a@b.co","password":"x"}`, 400, "invalid_argument"},
			{"signup huge body", "POST", "/v1/auth/signup", "", huge, 413, "payload_too_large"},
			{"signup not json", "POST", "/v1/auth/signup", "", `{"email":`, 400, "invalid_argument"},
			{"signup array", "POST", "/v1/auth/signup", "", `[1,2]`, 400, "invalid_argument"},
			{"signup two objects", "POST", "/v1/auth/signup", "", `{"email":"a@b.co","password":"abcdefghij"}{}`, 400, "invalid_argument"},
			{"signup empty", "POST", "/v1/auth/signup", "", nil, 400, "invalid_argument"},
			{"login null fields", "POST", "/v1/auth/login", "", `{"email":null,"password":null}`, 401, "unauthenticated"},
			{"create capsule wrong type", "POST", "/v1/capsules", u.token, `{"vcpus":"two"}`, 400, "invalid_argument"},
			{"create capsule float", "POST", "/v1/capsules", u.token, `{"memory_mb":1.5}`, 400, "invalid_argument"},
			{"create capsule overflow", "POST", "/v1/capsules", u.token, `{"memory_mb":1e40}`, 400, "invalid_argument"},
			{"create capsule negative", "POST", "/v1/capsules", u.token, `{"vcpus":-1}`, 400, "invalid_argument"},
			{"create capsule zero timeout", "POST", "/v1/capsules", u.token, `{"timeout_sec":0}`, 400, "invalid_argument"},
			{"create capsule huge vcpus", "POST", "/v1/capsules", u.token, `{"vcpus":100000}`, 400, "invalid_argument"},
			{"create capsule bad env key", "POST", "/v1/capsules", u.token, `{"env":{"A B":"x"}}`, 400, "invalid_argument"},
			{"create capsule env wrong type", "POST", "/v1/capsules", u.token, `{"env":{"A":1}}`, 400, "invalid_argument"},
			{"create capsule bad template", "POST", "/v1/capsules", u.token, `{"template":"../../etc"}`, 400, "invalid_argument"},
			{"create capsule unknown template", "POST", "/v1/capsules", u.token, `{"template":"nope"}`, 404, "not_found"},
			{"create capsule unknown field", "POST", "/v1/capsules", u.token, `{"cpus":1}`, 400, "invalid_argument"},
			{"create capsule wrong content type", "POST", "/v1/capsules", u.token, "x", 415, "unsupported_media_type"},
			{"bad capsule id", "GET", "/v1/capsules/..%2f..%2fetc", u.token, nil, 404, "not_found"},
			{"bad capsule id chars", "GET", "/v1/capsules/cl-ABC$%25", u.token, nil, 404, "not_found"},
			{"wrong id prefix", "GET", "/v1/capsules/usr-abc", u.token, nil, 404, "not_found"},
			{"long id", "GET", "/v1/capsules/cl-" + strings.Repeat("a", 500), u.token, nil, 404, "not_found"},
			{"missing capsule", "GET", cl, u.token, nil, 404, "not_found"},
			{"exec missing cmd", "POST", cl + "/exec", u.token, `{"args":["x"]}`, 400, "invalid_argument"},
			{"exec args wrong type", "POST", cl + "/exec", u.token, `{"cmd":"ls","args":"-l"}`, 400, "invalid_argument"},
			{"timeout missing", "POST", cl + "/timeout", u.token, `{}`, 400, "invalid_argument"},
			{"timeout string", "POST", cl + "/timeout", u.token, `{"timeout_sec":"10"}`, 400, "invalid_argument"},
			{"public missing", "PUT", cl + "/public", u.token, `{}`, 400, "invalid_argument"},
			{"files no path", "GET", cl + "/files", u.token, nil, 400, "invalid_argument"},
			{"files bad depth", "GET", cl + "/files/list?path=/&depth=x", u.token, nil, 400, "invalid_argument"},
			{"kill bad pid", "DELETE", cl + "/processes/abc", u.token, nil, 400, "invalid_argument"},
			{"kill bad signal", "DELETE", cl + "/processes/1?signal=HUP", u.token, nil, 400, "invalid_argument"},
			{"metrics bad window", "GET", cl + "/metrics?window=1y", u.token, nil, 400, "invalid_argument"},
			{"list bad limit", "GET", "/v1/capsules?limit=-5", u.token, nil, 400, "invalid_argument"},
			{"list bad status", "GET", "/v1/capsules?status=zombie", u.token, nil, 400, "invalid_argument"},
			{"list bad cursor", "GET", "/v1/capsules?cursor=!!!!", u.token, nil, 400, "invalid_argument"},
			{"list garbage cursor", "GET", "/v1/capsules?cursor=AAAA", u.token, nil, 400, "invalid_argument"},
			{"key empty name", "POST", "/v1/api-keys", u.token, `{"name":"  "}`, 400, "invalid_argument"},
			{"team bad role", "PATCH", "/v1/teams/" + u.team + "/members/" + u.id, u.token, `{"role":"god"}`, 400, "invalid_argument"},
			{"team bad id", "GET", "/v1/teams/xyz/members", u.token, nil, 404, "not_found"},
			{"invite bad email", "POST", "/v1/teams/" + u.team + "/invites", u.token, `{"email":"nope"}`, 400, "invalid_argument"},
			{"register no token", "POST", "/v1/hosts/register", "", `{"address":"1.2.3.4:5"}`, 400, "invalid_argument"},
			{"register bad token", "POST", "/v1/hosts/register", "", `{"token":"x","address":"1.2.3.4:5"}`, 401, "unauthenticated"},
			{"register bad address", "POST", "/v1/hosts/register", "", `{"token":"x","address":"nope"}`, 400, "invalid_argument"},
			{"register negative", "POST", "/v1/hosts/register", "", `{"token":"x","address":"a:1","vcpus":-1}`, 400, "invalid_argument"},
			{"heartbeat no cred", "POST", "/v1/hosts/host-x/heartbeat", "", `{}`, 401, "unauthenticated"},
			{"admin as user", "GET", "/v1/admin/hosts", u.token, nil, 403, "permission_denied"},
			{"admin token bad team", "POST", "/v1/admin/hosts/tokens", admin.token, `{"team_id":"garbage"}`, 400, "invalid_argument"},
			{"no route", "GET", "/v1/nope", u.token, nil, 404, "not_found"},
			{"wrong method", "PUT", "/v1/capsules", u.token, nil, 405, "method_not_allowed"},
			{"github not configured", "GET", "/v1/auth/github", "", nil, 501, "not_implemented"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := e.do(tt.method, tt.path, tt.cred, tt.body)
				if tt.name == "create capsule wrong content type" {
					r = e.do(tt.method, tt.path, tt.cred, nil, "Content-Type", "text/plain")
				}
				if r.status >= 500 && r.status != 501 {
					t.Fatalf("status %d (server error); body %s", r.status, r.body)
				}
				if r.status != tt.want {
					t.Fatalf("status = %d, want %d; body %s", r.status, tt.want, r.body)
				}
				m := r.json(t)
				if m["code"] != tt.code || m["message"] == "" || m["message"] == nil {
					t.Fatalf("body = %s, want code %q and a message", r.body, tt.code)
				}
			})
		}
	})
}
