package api_test

import (
	"context"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestCapsuleMetadata: metadata is returned by get and list and filters
// the list (metadata.<key>=<value>, all pairs must match); bad filters and
// oversized metadata are 400s.
func TestCapsuleMetadata(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("meta@example.com")
		ctx := context.Background()
		tmpl, err := st.GetTemplateByName(ctx, u.team, "minimal")
		if err != nil {
			t.Fatal(err)
		}
		mk := func(md map[string]string) string {
			c, err := st.CreateCapsule(ctx, store.Capsule{TeamID: u.team, TemplateID: tmpl.ID, Status: store.CapsuleRunning, Metadata: md})
			if err != nil {
				t.Fatal(err)
			}
			return c.ID
		}
		a := mk(map[string]string{"env": "prod", "role": "web"})
		b := mk(map[string]string{"env": "prod", "role": "db"})
		mk(nil)

		got := e.want(e.do("GET", "/v1/capsules/"+a, u.token, nil), 200).json(t)
		if md, _ := got["metadata"].(map[string]any); md["role"] != "web" || md["env"] != "prod" {
			t.Fatalf("metadata of get = %v", got["metadata"])
		}
		ids := func(path string) []string {
			var out []string
			for _, c := range e.want(e.do("GET", path, u.token, nil), 200).json(t)["capsules"].([]any) {
				out = append(out, c.(map[string]any)["id"].(string))
			}
			return out
		}
		if l := ids("/v1/capsules?metadata.env=prod"); len(l) != 2 {
			t.Fatalf("env=prod: %v", l)
		}
		if l := ids("/v1/capsules?metadata.env=prod&metadata.role=db"); len(l) != 1 || l[0] != b {
			t.Fatalf("env=prod&role=db: %v", l)
		}
		if l := ids("/v1/capsules?metadata.env=dev"); len(l) != 0 {
			t.Fatalf("env=dev: %v", l)
		}
		if l := ids("/v1/capsules"); len(l) != 3 {
			t.Fatalf("no filter: %v", l)
		}
		e.want(e.do("GET", "/v1/capsules?metadata.=x", u.token, nil), 400)
		big := map[string]string{}
		for i := range 65 {
			big[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
		}
		e.want(e.do("POST", "/v1/capsules", u.token, map[string]any{"template": "minimal", "metadata": big}), 400)
	})
}
