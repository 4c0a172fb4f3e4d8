package api_test

import (
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestVolumeRoutesBadInput: volume CRUD and the checks of volume_mounts
// that need no host: every bad input is a clear 4xx and changes nothing.
func TestVolumeRoutesBadInput(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("vol@example.com")
		other := e.signup("vol-other@example.com")
		r := e.want(e.do("POST", "/v1/volumes", u.token, `{"name":"data","size_mb":64}`), 201)
		if r.str(t, "location") != "store" || !strings.HasPrefix(r.str(t, "id"), "vol-") {
			t.Fatalf("created: %s", r.body)
		}
		e.want(e.do("POST", "/v1/volumes", other.token, `{"name":"theirs"}`), 201)

		mount := func(name, path string, ro bool) map[string]any {
			return map[string]any{"volume_mounts": []map[string]any{{"name": name, "path": path, "read_only": ro}}}
		}
		tests := []struct {
			name, method, path string
			body               any
			want               int
			code               string
		}{
			{"name with slash", "POST", "/v1/volumes", `{"name":"a/b"}`, 400, "invalid_argument"},
			{"name with dots up", "POST", "/v1/volumes", `{"name":".."}`, 400, "invalid_argument"},
			{"name upper case", "POST", "/v1/volumes", `{"name":"Data"}`, 400, "invalid_argument"},
			{"name empty", "POST", "/v1/volumes", `{"name":""}`, 400, "invalid_argument"},
			{"name too long", "POST", "/v1/volumes", `{"name":"` + strings.Repeat("a", 64) + `"}`, 400, "invalid_argument"},
			{"size too small", "POST", "/v1/volumes", `{"name":"small","size_mb":1}`, 400, "invalid_argument"},
			{"size too large", "POST", "/v1/volumes", `{"name":"big","size_mb":99999999}`, 400, "invalid_argument"},
			{"size wrong type", "POST", "/v1/volumes", `{"name":"x","size_mb":"1"}`, 400, "invalid_argument"},
			{"unknown field", "POST", "/v1/volumes", `{"name":"x","quota":1}`, 400, "invalid_argument"},
			{"duplicate name", "POST", "/v1/volumes", `{"name":"data"}`, 409, "conflict"},
			{"another team's volume", "GET", "/v1/volumes/theirs", nil, 404, "not_found"},
			{"delete another team's", "DELETE", "/v1/volumes/theirs", nil, 404, "not_found"},
			{"files of another team's", "GET", "/v1/volumes/theirs/files?path=/x", nil, 404, "not_found"},
			{"missing volume", "GET", "/v1/volumes/nope", nil, 404, "not_found"},
			{"bad name in path", "GET", "/v1/volumes/A%2Fb", nil, 400, "invalid_argument"},
			{"file no path", "GET", "/v1/volumes/data/files", nil, 400, "invalid_argument"},
			{"mount over /", "POST", "/v1/capsules", mount("data", "/", false), 400, "invalid_argument"},
			{"mount over /proc", "POST", "/v1/capsules", mount("data", "/proc", false), 400, "invalid_argument"},
			{"mount under /proc", "POST", "/v1/capsules", mount("data", "/proc/sys", false), 400, "invalid_argument"},
			{"mount over /dev", "POST", "/v1/capsules", mount("data", "/dev", false), 400, "invalid_argument"},
			{"mount under /sys", "POST", "/v1/capsules", mount("data", "/sys/fs", true), 400, "invalid_argument"},
			{"mount relative", "POST", "/v1/capsules", mount("data", "data", false), 400, "invalid_argument"},
			{"mount unclean", "POST", "/v1/capsules", mount("data", "/a/../b", false), 400, "invalid_argument"},
			{"mount bad name", "POST", "/v1/capsules", mount("a/b", "/data", false), 400, "invalid_argument"},
			{"mount another team's", "POST", "/v1/capsules", mount("theirs", "/data", false), 404, "not_found"},
			{"mount missing", "POST", "/v1/capsules", mount("nope", "/data", false), 404, "not_found"},
			{"duplicate paths", "POST", "/v1/capsules", map[string]any{"volume_mounts": []map[string]any{
				{"name": "data", "path": "/d"}, {"name": "data2", "path": "/d"},
			}}, 400, "invalid_argument"},
			{"nested paths", "POST", "/v1/capsules", map[string]any{"volume_mounts": []map[string]any{
				{"name": "data", "path": "/d"}, {"name": "data2", "path": "/d/e"},
			}}, 400, "invalid_argument"},
			{"same volume twice", "POST", "/v1/capsules", map[string]any{"volume_mounts": []map[string]any{
				{"name": "data", "path": "/d", "read_only": true}, {"name": "data", "path": "/e", "read_only": true},
			}}, 400, "invalid_argument"},
			{"gvisor", "POST", "/v1/capsules", map[string]any{"isolation": "gvisor", "volume_mounts": []map[string]any{{"name": "data", "path": "/d"}}}, 422, "volumes_unsupported"},
			{"microvm", "POST", "/v1/capsules", map[string]any{"isolation": "microvm", "volume_mounts": []map[string]any{{"name": "data", "path": "/d"}}}, 422, "volumes_unsupported"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := e.do(tt.method, tt.path, u.token, tt.body)
				if r.status != tt.want {
					t.Fatalf("status = %d, want %d; body %s", r.status, tt.want, r.body)
				}
				m := r.json(t)
				if m["code"] != tt.code || m["message"] == "" || m["message"] == nil {
					t.Fatalf("body = %s, want code %q and a message", r.body, tt.code)
				}
			})
		}
		// Nothing changed: one volume each, no capsule.
		l := e.want(e.do("GET", "/v1/volumes", u.token, nil), 200).json(t)
		if vs, _ := l["volumes"].([]any); len(vs) != 1 {
			t.Fatalf("volumes: %v", l)
		}
		c := e.want(e.do("GET", "/v1/capsules", u.token, nil), 200).json(t)
		if cs, _ := c["capsules"].([]any); len(cs) != 0 {
			t.Fatalf("capsules: %v", c)
		}
		e.want(e.do("GET", "/v1/volumes/theirs", other.token, nil), 200)
		e.want(e.do("DELETE", "/v1/volumes/data", u.token, nil), 204)
		e.want(e.do("GET", "/v1/volumes/data", u.token, nil), 404)
	})
}
