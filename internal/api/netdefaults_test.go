package api_test

import (
	"context"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestTemplateCapsuleInternetAPI: an admin of a template's team sets and
// clears its capsule_internet default with PATCH /v1/templates/{id}, GET
// returns it; bad bodies are 400, another team's template 404, a public
// template of the platform 403, and none of them change the default.
func TestTemplateCapsuleInternetAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("tplnet@example.com")
		other := e.signup("tplnet-other@example.com")
		ctx := context.Background()
		tpl, err := st.CreateTemplate(ctx, store.Template{TeamID: u.team, Name: "nettpl"})
		if err != nil {
			t.Fatal(err)
		}
		path := "/v1/templates/" + tpl.ID
		got := e.want(e.do("PATCH", path, u.token, map[string]any{"capsule_internet": false}), 200).json(t)
		if got["capsule_internet"] != false {
			t.Fatalf("patch = %v", got)
		}
		if got := e.want(e.do("GET", path, u.token, nil), 200).json(t); got["capsule_internet"] != false {
			t.Fatalf("get = %v", got)
		}
		for _, tc := range []struct {
			name  string
			token string
			path  string
			body  any
			code  int
			msg   string
		}{
			{"empty body", u.token, path, map[string]any{}, 400, "capsule_internet"},
			{"not a boolean", u.token, path, map[string]any{"capsule_internet": "no"}, 400, "true, false or null"},
			{"unknown field", u.token, path, map[string]any{"public": true}, 400, ""},
			{"bad id", u.token, "/v1/templates/nope", map[string]any{"capsule_internet": true}, 404, ""},
			{"another team's", other.token, path, map[string]any{"capsule_internet": true}, 404, ""},
			{"public platform template", u.token, "/v1/templates/tpl-base", map[string]any{"capsule_internet": true}, 403, "public"},
		} {
			func() { // e.want fails the parent test: no subtests
				t.Log(tc.name)
				if tc.name == "public platform template" {
					base, err := st.GetTemplateByName(ctx, u.team, "minimal")
					if err != nil {
						t.Fatal(err)
					}
					tc.path = "/v1/templates/" + base.ID
				}
				r := e.want(e.do("PATCH", tc.path, tc.token, tc.body), tc.code)
				if !strings.Contains(string(r.body), tc.msg) {
					t.Fatalf("%s: body %s lacks %q", tc.name, r.body, tc.msg)
				}
				after, err := st.GetTemplate(ctx, u.team, tpl.ID)
				if err != nil || after.CapsuleInternet == nil || *after.CapsuleInternet {
					t.Fatalf("%s: default changed: %v, %v", tc.name, after.CapsuleInternet, err)
				}
			}()
		}
		got = e.want(e.do("PATCH", path, u.token, map[string]any{"capsule_internet": nil}), 200).json(t)
		if _, ok := got["capsule_internet"]; ok {
			t.Fatalf("cleared default still returned: %v", got)
		}
		if after, _ := st.GetTemplate(ctx, u.team, tpl.ID); after.CapsuleInternet != nil {
			t.Fatalf("default not cleared: %v", *after.CapsuleInternet)
		}
	})
}

// TestAdminTeamPrivateRangesAPI: a platform admin opens private ranges to
// a team with PATCH /v1/admin/teams/{id} (canonical form returned and
// listed, an empty list clears them); public, link-local/metadata,
// loopback, IPv6 and malformed entries are 400 naming the entry with the
// ranges untouched; a non-admin is 403 and an unknown team 404.
func TestAdminTeamPrivateRangesAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("netadmin@example.com")
		e.makeAdmin(admin)
		u := e.signup("byoc@example.com")
		ctx := context.Background()
		path := "/v1/admin/teams/" + u.team
		got := e.want(e.do("PATCH", path, admin.token, map[string]any{"allowed_private_ranges": []string{"10.111.7.0/16", "192.168.5.5"}}), 200).json(t)
		if r, _ := got["allowed_private_ranges"].([]any); len(r) != 2 || r[0] != "10.111.0.0/16" || r[1] != "192.168.5.5/32" {
			t.Fatalf("patch = %v", got)
		}
		list := e.want(e.do("GET", "/v1/admin/teams", admin.token, nil), 200).json(t)["teams"].([]any)
		found := false
		for _, x := range list {
			if m := x.(map[string]any); m["id"] == u.team {
				found = len(m["allowed_private_ranges"].([]any)) == 2
			}
		}
		if !found {
			t.Fatalf("admin team list lacks the ranges: %v", list)
		}
		for _, tc := range []struct {
			name  string
			token string
			path  string
			body  any
			code  int
			msg   string
		}{
			{"public range", admin.token, path, map[string]any{"allowed_private_ranges": []string{"203.0.113.0/24"}}, 400, "not inside a private range"},
			{"metadata", admin.token, path, map[string]any{"allowed_private_ranges": []string{"10.111.0.0/16", "169.254.169.254"}}, 400, `allowed_private_ranges[1]`},
			{"loopback", admin.token, path, map[string]any{"allowed_private_ranges": []string{"127.0.0.0/8"}}, 400, "not inside a private range"},
			{"everything", admin.token, path, map[string]any{"allowed_private_ranges": []string{"0.0.0.0/0"}}, 400, "not inside a private range"},
			{"ipv6", admin.token, path, map[string]any{"allowed_private_ranges": []string{"fd00::/8"}}, 400, "IPv4"},
			{"malformed", admin.token, path, map[string]any{"allowed_private_ranges": []string{"10.111.0.0/40"}}, 400, "allowed_private_ranges[0]"},
			{"not a list", admin.token, path, map[string]any{"allowed_private_ranges": "10.111.0.0/16"}, 400, ""},
			{"empty body", admin.token, path, map[string]any{}, 400, "allowed_private_ranges"},
			{"not an admin", u.token, path, map[string]any{"allowed_private_ranges": []string{"10.112.0.0/16"}}, 403, ""},
			{"unknown team", admin.token, "/v1/admin/teams/team-0123456789abcdef", map[string]any{"allowed_private_ranges": []string{"10.112.0.0/16"}}, 404, ""},
		} {
			func() { // e.want fails the parent test: no subtests
				t.Log(tc.name)
				r := e.want(e.do("PATCH", tc.path, tc.token, tc.body), tc.code)
				if !strings.Contains(string(r.body), tc.msg) {
					t.Fatalf("%s: body %s lacks %q", tc.name, r.body, tc.msg)
				}
				team, err := st.GetTeam(ctx, u.team)
				if err != nil || len(team.AllowedPrivateRanges) != 2 {
					t.Fatalf("%s: ranges changed: %v, %v", tc.name, team.AllowedPrivateRanges, err)
				}
			}()
		}
		got = e.want(e.do("PATCH", path, admin.token, map[string]any{"allowed_private_ranges": []string{}}), 200).json(t)
		if _, ok := got["allowed_private_ranges"]; ok {
			t.Fatalf("cleared ranges still returned: %v", got)
		}
		if team, _ := st.GetTeam(ctx, u.team); len(team.AllowedPrivateRanges) != 0 {
			t.Fatalf("ranges not cleared: %v", team.AllowedPrivateRanges)
		}
	})
}
