package e2b

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// TestE2BVolumes: E2B's volume routes map onto Wrenn's volumes (ids are
// vol-…, another team's volume is 404), and a sandbox create's
// volumeMounts are checked by the same rules (a mount over / is 400).
func TestE2BVolumes(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := context.Background()
	teams := map[string]string{}
	for _, k := range []string{"a", "b"} {
		tm, err := st.CreateTeam(ctx, store.Team{Name: "e2b-vol-" + k})
		if err != nil {
			t.Fatal(err)
		}
		teams[k] = tm.ID
	}
	svc := capsules.New(capsules.Config{Store: st})
	h := New(Config{Capsules: svc, Store: st, Key: []byte("k"), Auth: func(r *http.Request) (capsules.Scope, error) {
		return capsules.TeamScope(teams[r.Header.Get("X-API-Key")], "", capsules.SystemScope().Actor), nil
	}})
	do := func(key, method, path, body string) (int, string) {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("X-API-Key", key)
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	code, body := do("a", "POST", "/e2b/volumes", `{"name":"shared"}`)
	var v e2bVolumeAndToken
	if code != 201 || json.Unmarshal([]byte(body), &v) != nil || !strings.HasPrefix(v.VolumeID, "vol-") || v.Name != "shared" {
		t.Fatalf("create: %d %s", code, body)
	}
	if code, body := do("a", "POST", "/e2b/volumes", `{"name":"a/b"}`); code != 400 {
		t.Fatalf("bad name: %d %s", code, body)
	}
	if code, body := do("a", "GET", "/e2b/volumes", ""); code != 200 || !strings.Contains(body, v.VolumeID) {
		t.Fatalf("list: %d %s", code, body)
	}
	if code, _ := do("a", "GET", "/e2b/volumes/"+v.VolumeID, ""); code != 200 {
		t.Fatalf("get: %d", code)
	}
	if code, _ := do("b", "GET", "/e2b/volumes/"+v.VolumeID, ""); code != 404 {
		t.Fatalf("another team's get: %d", code)
	}
	if code, _ := do("b", "DELETE", "/e2b/volumes/"+v.VolumeID, ""); code != 404 {
		t.Fatalf("another team's delete: %d", code)
	}
	if code, body := do("a", "POST", "/e2b/sandboxes", `{"templateID":"base","volumeMounts":[{"name":"shared","path":"/"}]}`); code != 400 {
		t.Fatalf("mount over /: %d %s", code, body)
	}
	if code, body := do("b", "POST", "/e2b/sandboxes", `{"templateID":"base","volumeMounts":[{"name":"shared","path":"/data"}]}`); code != 404 {
		t.Fatalf("another team's volume: %d %s", code, body)
	}
	if code, _ := do("a", "DELETE", "/e2b/volumes/"+v.VolumeID, ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code, _ := do("a", "GET", "/e2b/volumes/"+v.VolumeID, ""); code != 404 {
		t.Fatalf("after delete: %d", code)
	}
}
