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

// TestAllowInternetThroughTheAPI: a capsule created through the API with
// the defaults reaches a public-range address (a fake internet host in its
// own network namespace); one created with allow_internet:false does not.
// GET shows the setting. The host stays unreachable for both.
func TestAllowInternetThroughTheAPI(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, nil)
	adminTok, adminID, _ := c.signup("inet-admin@example.com")
	if _, err := st.GrantUserAdmin(testutil.Context(t, testutil.Short), adminID); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, adminTok)
	userTok, _, _ := c.signup("inet-user@example.com")
	inet := fakeinet.New(t, "cp")
	public := inet.Serve(t)

	// A host service on every address: never reachable from a capsule.
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhost"))
			_ = conn.Close()
		}
	}()
	hostAddr := net.JoinHostPort(inet.HostIP.String(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))

	fetch := func(id, addr string) bool {
		t.Helper()
		h, p, _ := net.SplitHostPort(addr)
		out := c.call("POST", "/v1/capsules/"+id+"/exec", userTok, map[string]any{
			"cmd": "sh", "args": []string{"-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s %s`, h, p)},
		}, 200).obj(t)
		return strings.Contains(out["stdout"].(string), " 200 OK")
	}
	for _, tc := range []struct {
		name   string
		body   map[string]any
		wantOn bool
	}{
		{"default", map[string]any{}, true},
		{"allow_internet false", map[string]any{"allow_internet": false}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}
			for k, v := range tc.body {
				body[k] = v
			}
			created := c.call("POST", "/v1/capsules", userTok, body, 201).obj(t)
			id := created["id"].(string)
			defer c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
			if got := c.call("GET", "/v1/capsules/"+id, userTok, nil, 200).obj(t)["allow_internet"]; got != tc.wantOn {
				t.Errorf("GET allow_internet = %v, want %v", got, tc.wantOn)
			}
			if got := fetch(id, public); got != tc.wantOn {
				t.Errorf("public address reachable = %v, want %v", got, tc.wantOn)
			}
			if fetch(id, hostAddr) {
				t.Errorf("the host (%s) is reachable from the capsule", hostAddr)
			}
		})
	}
}
