package api_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestHostRegistrationAndHeartbeat(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("hostadmin@example.com")
		e.makeAdmin(admin)
		user := e.signup("hostuser@example.com")

		e.want(e.do("POST", "/v1/admin/hosts/tokens", user.token, nil), 403)
		tok := e.want(e.do("POST", "/v1/admin/hosts/tokens", admin.token, nil), 201).str(t, "token")
		reg := map[string]any{"token": tok, "address": "127.0.0.1:50051", "vcpus": 4, "memory_mb": 8192, "disk_mb": 100000}
		r := e.want(e.do("POST", "/v1/hosts/register", "", reg), 201)
		hostID, cred := r.str(t, "host_id"), r.str(t, "credential")
		if !strings.HasPrefix(hostID, "host-") || cred == "" {
			t.Fatalf("register = %s", r.body)
		}
		if cred != e.agents.Credential(hostID) {
			t.Fatal("credential is not the one the control plane presents to the agent")
		}
		// One-time token.
		e.want(e.do("POST", "/v1/hosts/register", "", reg), 401)

		hb := map[string]any{"vcpus": 4, "memory_mb": 8192, "used_memory_mb": 1024, "used_vcpus": 1}
		e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", cred, hb), 200)
		e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", "wrh_wrong", hb), 401)
		e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", user.token, hb), 401)
		h, err := st.GetHost(context.Background(), hostID)
		if err != nil || h.UsedMemoryMB != 1024 || h.Status != store.HostOnline {
			t.Fatalf("host after heartbeat = %+v, %v", h, err)
		}
		// A second host's credential cannot speak for the first.
		otherID, otherCred := e.registerHost(admin, "127.0.0.1:50052", "")
		e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", otherCred, hb), 403)

		list := e.want(e.do("GET", "/v1/admin/hosts", admin.token, nil), 200)
		if !strings.Contains(string(list.body), hostID) || !strings.Contains(string(list.body), otherID) || strings.Contains(string(list.body), cred) {
			t.Fatalf("host list = %s", list.body)
		}

		// BYOC: a BYOC team registers its own host; a normal team cannot.
		e.want(e.do("POST", "/v1/hosts/tokens", user.token, nil), 403)
		if err := st.SetTeamBYOC(context.Background(), user.team, true); err != nil {
			t.Fatal(err)
		}
		btok := e.want(e.do("POST", "/v1/hosts/tokens", user.token, nil), 201).str(t, "token")
		br := e.want(e.do("POST", "/v1/hosts/register", "", map[string]any{"token": btok, "address": "10.0.0.9:50051", "vcpus": 2, "memory_mb": 2048}), 201)
		bh, err := st.GetHost(context.Background(), br.str(t, "host_id"))
		if err != nil || bh.TeamID != user.team {
			t.Fatalf("BYOC host = %+v, %v", bh, err)
		}
	})
}

// TestUnavailableIs503 checks that no capacity and an unreachable agent
// are friendly 503s that leak nothing internal.
func TestUnavailableIs503(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("ops@example.com")
		e.makeAdmin(admin)
		u := e.signup("dev@example.com")

		r := e.want(e.do("POST", "/v1/capsules", u.token, nil), 503)
		if r.str(t, "code") != "unavailable" || !strings.Contains(r.str(t, "message"), "try again") {
			t.Fatalf("no hosts: %s", r.body)
		}

		// A host whose agent does not answer: a closed port.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		e.registerHost(admin, addr, "")
		r = e.want(e.do("POST", "/v1/capsules", u.token, map[string]any{"template": "minimal"}), 503)
		msg := r.str(t, "message")
		if r.str(t, "code") != "unavailable" || strings.Contains(msg, addr) || strings.Contains(msg, "dial") || strings.Contains(msg, "connection refused") {
			t.Fatalf("agent down: %s", r.body)
		}
		// The failed create left the capsule in error, not running.
		caps, _, err := st.ListCapsules(context.Background(), u.team, store.CapsuleFilter{})
		if err != nil || len(caps) != 1 || caps[0].Status != store.CapsuleError {
			t.Fatalf("capsules after failed create = %+v, %v", caps, err)
		}
		// GET says why, without internal detail.
		got := e.want(e.do("GET", "/v1/capsules/"+caps[0].ID, u.token, nil), 200).json(t)
		if reason, _ := got["error_reason"].(string); reason == "" || strings.Contains(reason, addr) || strings.Contains(reason, "dial") {
			t.Fatalf("error_reason of the failed create = %q", reason)
		}
		if got["allow_internet"] != true {
			t.Fatalf("allow_internet of a default create = %v, want true", got["allow_internet"])
		}
		// Exec on a running capsule whose agent is gone: 503 too.
		c := e.insertCapsule(u.team, caps[0].HostID)
		r = e.want(e.do("POST", "/v1/capsules/"+c.ID+"/exec", u.token, map[string]any{"cmd": "true"}), 503)
		if strings.Contains(string(r.body), addr) {
			t.Fatalf("exec leaks the agent address: %s", r.body)
		}
		// Deleting a capsule in error whose agent is unreachable is refused
		// only while the host is considered online.
		e.want(e.do("DELETE", "/v1/capsules/"+caps[0].ID, u.token, nil), 503)
		if err := st.SetHostStatus(context.Background(), caps[0].HostID, store.HostUnavailable); err != nil {
			t.Fatal(err)
		}
		e.want(e.do("DELETE", "/v1/capsules/"+caps[0].ID, u.token, nil), 204)
	})
}

func TestHealthMetricsRequestID(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		r := e.want(e.do("GET", "/health", "", nil), 200)
		if r.str(t, "status") != "ok" {
			t.Fatalf("health = %s", r.body)
		}
		r = e.do("GET", "/v1/me", "", nil, "X-Request-Id", "client-chosen-id")
		rid := r.header.Get("X-Request-Id")
		if rid == "" || rid == "client-chosen-id" || r.str(t, "request_id") != rid {
			t.Fatalf("request id %q (body %s): a fresh server id was expected", rid, r.body)
		}
		u := e.signup("metrics@example.com")
		e.insertCapsule(u.team, "")
		m := e.want(e.do("GET", "/metrics", "", nil), 200)
		for _, want := range []string{
			`wrenn_http_requests_total{method="GET",route="/health",status="200"} 1`,
			`wrenn_http_request_duration_seconds_bucket`,
			`wrenn_capsules{state="running"} 1`,
		} {
			if !strings.Contains(string(m.body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		spec := e.want(e.do("GET", "/openapi.yaml", "", nil), 200)
		if !strings.Contains(string(spec.body), "openapi: 3") || !strings.Contains(string(spec.body), "/v1/capsules") {
			t.Fatalf("openapi.yaml looks wrong: %.200s", spec.body)
		}
		// A closed store makes /health fail, and an internal error shows
		// nothing but "internal error" and the request id.
		_ = st.Close()
		e.want(e.do("GET", "/health", "", nil), 503)
		r = e.want(e.do("GET", "/v1/capsules", u.token, nil), 500)
		rid = r.header.Get("X-Request-Id")
		if r.str(t, "code") != "internal" || r.str(t, "message") != "internal error (request id "+rid+")" {
			t.Fatalf("internal error body: %s", r.body)
		}
	})
}
