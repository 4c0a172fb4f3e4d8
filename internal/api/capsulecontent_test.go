package api_test

import (
	"net/http"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// TestAPIOriginServesNoCapsulePorts: the port proxy has its own listener;
// /proxy/… on the API is an unknown route with the usual error body.
func TestAPIOriginServesNoCapsulePorts(t *testing.T) {
	e := newEnv(t, apitest.SQLite(t))
	u := e.signup("porter@example.com")
	for _, path := range []string{"/proxy/cl-abc/8080/", "/proxy/cl-abc/8080/index.html?wrenn_access_token=x"} {
		r := e.want(e.do("GET", path, u.token, nil), http.StatusNotFound)
		if r.str(t, "code") != "not_found" || r.str(t, "message") == "" {
			t.Errorf("%s: body %s, want the {code,message} error", path, r.body)
		}
	}
}

// TestCapsuleRoutesAreSandboxed: whatever a capsule route answers (its
// content comes from capsule code), browsers neither sniff nor run it on
// the API's origin.
func TestCapsuleRoutesAreSandboxed(t *testing.T) {
	e := newEnv(t, apitest.SQLite(t))
	admin := e.signup("root@example.com")
	e.makeAdmin(admin)
	hostID, _ := e.registerHost(admin, "127.0.0.1:1", "")
	u := e.signup("sandbox@example.com")
	c := e.insertCapsule(u.team, hostID)
	for _, rt := range []struct{ method, path string }{
		{"GET", "/v1/capsules/" + c.ID},
		{"GET", "/v1/capsules/" + c.ID + "/files?path=/tmp/page.html"}, // the agent is unreachable: an error, still marked
		{"GET", "/v1/capsules/" + c.ID + "/files/list?path=/"},
		{"GET", "/v1/capsules/" + c.ID + "/processes"},
		{"GET", "/v1/capsules/cl-doesnotexist0000"},
	} {
		r := e.do(rt.method, rt.path, u.token, nil)
		if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s (%d): X-Content-Type-Options %q, want nosniff", rt.method, rt.path, r.status, got)
		}
		if got := r.header.Get("Content-Security-Policy"); got != "sandbox" {
			t.Errorf("%s %s (%d): Content-Security-Policy %q, want sandbox", rt.method, rt.path, r.status, got)
		}
	}
}
