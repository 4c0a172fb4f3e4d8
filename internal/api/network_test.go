package api_test

import (
	"context"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestCapsuleNetworkAPI: the team default (PATCH capsule_internet), the
// policy returned by get, and clear 4xx answers for bad policies on create
// and PUT /network (the stored policy untouched), another team's capsule
// and a capsule that is not running.
func TestCapsuleNetworkAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("net@example.com")
		other := e.signup("other-net@example.com")
		ctx := context.Background()

		// Team default: set by an admin, returned, {} is a 400.
		got := e.want(e.do("PATCH", "/v1/teams/"+u.team+"/", u.token, map[string]any{"capsule_internet": false}), 200).json(t)
		if got["capsule_internet"] != false {
			t.Fatalf("team = %v", got)
		}
		teams := e.want(e.do("GET", "/v1/teams", u.token, nil), 200).json(t)["teams"].([]any)
		if teams[0].(map[string]any)["capsule_internet"] != false {
			t.Fatalf("teams = %v", teams)
		}
		e.want(e.do("PATCH", "/v1/teams/"+u.team+"/", u.token, map[string]any{}), 400)
		e.want(e.do("PATCH", "/v1/teams/"+u.team+"/", u.token, map[string]any{"capsule_internet": "no"}), 400)
		e.want(e.do("PATCH", "/v1/teams/"+u.team+"/", other.token, map[string]any{"capsule_internet": true}), 404)

		tmpl, err := st.GetTemplateByName(ctx, u.team, "minimal")
		if err != nil {
			t.Fatal(err)
		}
		policy := &store.CapsuleNetwork{AllowOut: []string{"*.example.com"}, DenyOut: []string{"0.0.0.0/0"}, EgressMBps: 10}
		c, err := st.CreateCapsule(ctx, store.Capsule{TeamID: u.team, TemplateID: tmpl.ID, Status: store.CapsuleRunning, AllowInternet: true, Network: policy})
		if err != nil {
			t.Fatal(err)
		}
		nw, _ := e.want(e.do("GET", "/v1/capsules/"+c.ID, u.token, nil), 200).json(t)["network"].(map[string]any)
		if nw["egress_mbps"] != float64(10) || nw["allow_out"].([]any)[0] != "*.example.com" {
			t.Fatalf("network of get = %v", nw)
		}

		many := make([]string, 1001)
		for i := range many {
			many[i] = "203.0.113.1"
		}
		for _, tc := range []struct {
			name string
			body any
			msg  string
		}{
			{"malformed cidr", map[string]any{"deny_out": []string{"203.0.113.0/99"}}, `network.deny_out[0] \"203.0.113.0/99\"`},
			{"invalid name", map[string]any{"allow_out": []string{"bad_name!.com"}, "deny_out": []string{"0.0.0.0/0"}}, "network.allow_out[0]"},
			{"over 1000", map[string]any{"deny_out": many}, ""},
			{"rules without internet", map[string]any{"allow_internet": false, "deny_out": []string{"203.0.113.0/24"}}, "allow_internet"},
			{"unknown field", map[string]any{"allow_private": []string{"10.0.0.0/8"}}, ""},
			{"negative rate", map[string]any{"egress_mbps": -5}, "egress_mbps"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.want(e.do("PUT", "/v1/capsules/"+c.ID+"/network", u.token, tc.body), 400)
				if !strings.Contains(string(r.body), tc.msg) {
					t.Fatalf("body %s lacks %q", r.body, tc.msg)
				}
				after, err := st.GetCapsule(ctx, u.team, c.ID)
				if err != nil || after.Network == nil || after.Network.AllowOut[0] != "*.example.com" || !after.AllowInternet {
					t.Fatalf("policy changed: %+v, %v", after.Network, err)
				}
				// The same policy on create is the same 400.
				if tc.name != "unknown field" {
					body := map[string]any{"template": "minimal", "network": tc.body}
					if m, ok := tc.body.(map[string]any); ok {
						if ai, ok := m["allow_internet"]; ok {
							rest := map[string]any{}
							for k, v := range m {
								if k != "allow_internet" {
									rest[k] = v
								}
							}
							body = map[string]any{"template": "minimal", "allow_internet": ai, "network": rest}
						}
					}
					e.want(e.do("POST", "/v1/capsules", u.token, body), 400)
				}
			})
		}
		e.want(e.do("PUT", "/v1/capsules/"+c.ID+"/network", other.token, map[string]any{}), 404)
		stopped, err := st.CreateCapsule(ctx, store.Capsule{TeamID: u.team, TemplateID: tmpl.ID, Status: store.CapsuleStopped, AllowInternet: true})
		if err != nil {
			t.Fatal(err)
		}
		e.want(e.do("PUT", "/v1/capsules/"+stopped.ID+"/network", u.token, map[string]any{"deny_out": []string{"203.0.113.0/24"}}), 409)
	})
}
