package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/usage"
)

var testKey = []byte("0123456789abcdef0123456789abcdef-test-key")

// env is an API served by httptest on a real store.
type env struct {
	t        testing.TB
	st       store.Store
	srv      *httptest.Server
	sessions *auth.Sessions
	agents   *agents.Pool
	api      *api.API
}

// envOpt adjusts the config; base is the server's URL.
type envOpt func(c *api.Config, base string)

func newEnv(t testing.TB, st store.Store, opts ...envOpt) *env {
	t.Helper()
	sessions, err := auth.NewSessions(auth.DeriveKey(testKey, "session"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := agents.New(agents.Config{Key: auth.DeriveKey(testKey, "host")})
	cfg := api.Config{
		Store: st, Sessions: sessions, States: auth.NewStateSigner(auth.DeriveKey(testKey, "state")),
		Agents: pool, Registry: prometheus.NewRegistry(), MaxBodyBytes: 64 << 10,
		Audit: &audit.Recorder{Store: st}, Usage: &usage.Service{Store: st},
	}
	srv := httptest.NewUnstartedServer(nil)
	base := "http://" + srv.Listener.Addr().String()
	for _, o := range opts {
		o(&cfg, base)
	}
	a := api.New(cfg)
	var h http.Handler = a
	if _, bench := t.(*testing.B); !bench {
		// Every answer a test receives must match openapi.yaml.
		h = apitest.NewValidator(t).Handler(t, h)
	}
	srv.Config.Handler = h
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(pool.Close)
	return &env{t: t, st: st, srv: srv, sessions: sessions, agents: pool, api: a}
}

// forEachStore runs f against SQLite and PostgreSQL.
func forEachStore(t *testing.T, f func(t *testing.T, st store.Store)) {
	for _, o := range apitest.Stores() {
		t.Run(o.Name, func(t *testing.T) { f(t, o.Open(t)) })
	}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

func (r resp) str(t testing.TB, key string) string {
	t.Helper()
	v, _ := r.json(t)[key].(string)
	return v
}

// do sends a request; body may be nil, a string (sent raw) or a value
// (sent as JSON). cred is an API key or session token ("" for none).
func (e *env) do(method, path, cred string, body any, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cred != "" {
		if strings.HasPrefix(cred, auth.APIKeyPrefix) {
			req.Header.Set("X-API-Key", cred)
		} else {
			req.Header.Set("Authorization", "Bearer "+cred)
		}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) want(r resp, status int) resp {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status = %d, want %d; body: %s", r.status, status, r.body)
	}
	return r
}

// user is a signed-up user.
type user struct {
	id, email, token, team string
}

func (e *env) signup(email string) user {
	e.t.Helper()
	r := e.want(e.do("POST", "/v1/auth/signup", "", map[string]string{"email": email, "password": "correct horse battery", "name": strings.Split(email, "@")[0]}), 201)
	m := r.json(e.t)
	return user{
		id: m["user"].(map[string]any)["id"].(string), email: email, token: m["token"].(string),
		team: m["team"].(map[string]any)["id"].(string),
	}
}

func (e *env) apiKey(u user, name string) string {
	e.t.Helper()
	r := e.want(e.do("POST", "/v1/api-keys", u.token, map[string]string{"name": name}), 201)
	return r.str(e.t, "key")
}

// makeAdmin grants platform admin in the store.
func (e *env) makeAdmin(u user) {
	e.t.Helper()
	if _, err := e.st.GrantUserAdmin(context.Background(), u.id); err != nil {
		e.t.Fatal(err)
	}
}

// registerHost creates a token as admin and registers a host at addr.
func (e *env) registerHost(admin user, addr string, teamID string) (hostID, cred string) {
	e.t.Helper()
	body := map[string]any{}
	if teamID != "" {
		body["team_id"] = teamID
	}
	tok := e.want(e.do("POST", "/v1/admin/hosts/tokens", admin.token, body), 201).str(e.t, "token")
	r := e.want(e.do("POST", "/v1/hosts/register", "", map[string]any{
		"token": tok, "address": addr, "vcpus": 8, "memory_mb": 16384, "disk_mb": 200000,
	}), 201)
	return r.str(e.t, "host_id"), r.str(e.t, "credential")
}

// insertCapsule puts a running capsule straight into the store.
func (e *env) insertCapsule(teamID, hostID string) store.Capsule {
	e.t.Helper()
	c, err := e.st.CreateCapsule(context.Background(), store.Capsule{
		ID: store.NewID(store.PrefixCapsule), TeamID: teamID, TemplateID: "tpl-base", HostID: hostID,
		Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 512, DiskSizeMB: 5120, TimeoutSec: 300,
		AccessTokenHash: auth.HashToken("wrc_test"),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}
