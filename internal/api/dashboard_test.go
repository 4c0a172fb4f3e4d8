package api_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestAuthOptions(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		got := e.want(e.do("GET", "/v1/auth/options", "", nil), 200).json(t)
		if got["signup"] != true || got["github"] != false || got["proxy_port"] != float64(0) || got["proxy_domain"] != "" {
			t.Fatalf("options = %v", got)
		}
		e2 := newEnv(t, st, func(c *api.Config, _ string) {
			c.DisableSignup, c.ProxyPort, c.ProxyDomain = true, 9726, "wrenn.test"
			c.GitHub = auth.NewGitHubClient(auth.GitHubConfig{ClientID: "cid", ClientSecret: "cs"}.WithDefaults(), nil)
		})
		got = e2.want(e2.do("GET", "/v1/auth/options", "", nil), 200).json(t)
		if got["signup"] != false || got["github"] != true || got["proxy_port"] != float64(9726) || got["proxy_domain"] != "wrenn.test" {
			t.Fatalf("options = %v", got)
		}
	})
}

func TestUpdateMe(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("grace@example.com")
		me := e.want(e.do("PATCH", "/v1/me", u.token, map[string]string{"name": "  Grace Hopper "}), 200).json(t)
		if me["name"] != "Grace Hopper" || me["user_id"] != u.id {
			t.Fatalf("patched me = %v", me)
		}
		if got := e.want(e.do("GET", "/v1/me", u.token, nil), 200).str(t, "name"); got != "Grace Hopper" {
			t.Fatalf("name after patch = %q", got)
		}
		key := e.apiKey(u, "k")
		e.want(e.do("PATCH", "/v1/me", key, map[string]string{"name": "G. H."}), 200)
		for _, tc := range []struct {
			body any
			want int
		}{
			{map[string]string{"name": ""}, 400},
			{map[string]string{"name": "a\nb"}, 400},
			{map[string]any{"name": "x", "email": "y@example.com"}, 400},
			{"not json", 400},
		} {
			if r := e.do("PATCH", "/v1/me", u.token, tc.body); r.status != tc.want || r.str(t, "code") != "invalid_argument" {
				t.Errorf("PATCH /v1/me %v = %d %s, want %d invalid_argument", tc.body, r.status, r.body, tc.want)
			}
		}
		e.want(e.do("PATCH", "/v1/me", "", map[string]string{"name": "x"}), 401)
	})
}
