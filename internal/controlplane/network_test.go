package controlplane_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/fakeinet"
)

// TestNetworkPolicyThroughTheAPI: an egress policy given at create holds in
// the capsule; PUT /network changes it live (through the capsule service
// and the agent's UpdateCapsuleNetwork); a bad policy is a 400 that leaves
// the old one in force; a team's capsule_internet=false is the default of
// its new capsules.
func TestNetworkPolicyThroughTheAPI(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, nil)
	adminTok, adminID, _ := c.signup("netpol-admin@example.com")
	if _, err := st.GrantUserAdmin(testutil.Context(t, testutil.Short), adminID); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, adminTok)
	userTok, _, teamID := c.signup("netpol-user@example.com")
	inet := fakeinet.New(t, "np")
	public := inet.Serve(t)
	publicIP, _, _ := net.SplitHostPort(public)

	reach := func(id string) bool {
		t.Helper()
		h, p, _ := net.SplitHostPort(public)
		out := c.call("POST", "/v1/capsules/"+id+"/exec", userTok, map[string]any{
			"cmd": "sh", "args": []string{"-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s %s`, h, p)},
		}, 200).obj(t)
		return strings.Contains(out["stdout"].(string), " 200 OK")
	}
	created := c.call("POST", "/v1/capsules", userTok, map[string]any{
		"template": "minimal", "memory_mb": 128, "disk_size_mb": 512,
		"network": map[string]any{"deny_out": []string{publicIP + "/32"}, "egress_mbps": 20},
	}, 201).obj(t)
	id := created["id"].(string)
	defer c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
	if nw, _ := c.call("GET", "/v1/capsules/"+id, userTok, nil, 200).obj(t)["network"].(map[string]any); nw["egress_mbps"] != float64(20) {
		t.Fatalf("GET network = %v", nw)
	}
	if reach(id) {
		t.Fatal("deny_out at create: the denied address is reachable")
	}
	steps := []struct {
		name string
		body map[string]any
		want bool
	}{
		{"cleared", map[string]any{}, true},
		{"deny everything", map[string]any{"deny_out": []string{"0.0.0.0/0"}}, false},
		{"allow wins over deny", map[string]any{"deny_out": []string{"0.0.0.0/0"}, "allow_out": []string{publicIP}}, true},
		{"internet off", map[string]any{"allow_internet": false}, false},
		{"internet on", map[string]any{"allow_internet": true}, true},
	}
	for _, s := range steps {
		got := c.call("PUT", "/v1/capsules/"+id+"/network", userTok, s.body, 200).obj(t)
		if r := reach(id); r != s.want {
			t.Fatalf("%s: reachable = %v, want %v (capsule %v)", s.name, r, s.want, got)
		}
	}
	// A bad policy is a 400 and the policy in force (all allowed) stays.
	c.call("PUT", "/v1/capsules/"+id+"/network", userTok, map[string]any{"deny_out": []string{"0.0.0.0/0", "bad..name"}}, 400)
	if !reach(id) {
		t.Fatal("a refused policy changed the capsule's network")
	}

	// The team's default.
	c.call("PATCH", "/v1/teams/"+teamID+"/", userTok, map[string]any{"capsule_internet": false}, 200)
	off := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
	offID := off["id"].(string)
	defer c.call("DELETE", "/v1/capsules/"+offID, userTok, nil, 204)
	if off["allow_internet"] != false || reach(offID) {
		t.Fatalf("team default off: allow_internet %v, reachable %v", off["allow_internet"], reach(offID))
	}
}
