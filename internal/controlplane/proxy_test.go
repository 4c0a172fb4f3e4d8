package controlplane_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent/portproxy"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// countingStore counts the reads the port proxy makes.
type countingStore struct {
	store.Store
	capsuleReads, hostReads atomic.Int64
}

func (s *countingStore) GetCapsuleUnscoped(ctx context.Context, id string) (store.Capsule, error) {
	s.capsuleReads.Add(1)
	return s.Store.GetCapsuleUnscoped(ctx, id)
}

func (s *countingStore) GetHost(ctx context.Context, id string) (store.Host, error) {
	s.hostReads.Add(1)
	return s.Store.GetHost(ctx, id)
}

// proxyFixture is a control plane with a host whose "agent" is the real
// agent port proxy behind a host-secret check, in front of a listener that
// records what capsule code would receive.
type proxyFixture struct {
	c        *cp
	st       *countingStore
	capsule  store.Capsule
	token    string
	port     int
	received chan http.Header
	queries  chan string
}

func newProxyFixture(t *testing.T) *proxyFixture {
	t.Helper()
	f := &proxyFixture{st: &countingStore{Store: apitest.SQLite(t)}, received: make(chan http.Header, 16), queries: make(chan string, 16)}
	f.c = startCP(t, f.st, func(cfg *controlplane.Config) { cfg.ProxyDomain = "wrenn.test" })
	ctx := context.Background()

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.received <- r.Header.Clone()
		f.queries <- r.URL.RawQuery
		_, _ = w.Write([]byte("from the capsule"))
	}))
	t.Cleanup(app.Close)
	_, ps, _ := net.SplitHostPort(app.Listener.Addr().String())
	f.port, _ = strconv.Atoi(ps)

	pp := portproxy.New(portproxy.Config{Resolve: func(context.Context, string) (netip.Addr, error) {
		return netip.MustParseAddr("127.0.0.1"), nil
	}})
	t.Cleanup(pp.Close)
	var hostID atomic.Value
	hostID.Store("")
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Wrenn-Host-Secret") != f.c.srv.HostCredential(hostID.Load().(string)) {
			http.Error(w, "bad host secret", http.StatusUnauthorized)
			return
		}
		r.Header.Del("X-Wrenn-Host-Secret")
		pp.ServeHTTP(w, r)
	}))
	t.Cleanup(agent.Close)

	adminTok, adminID, _ := f.c.signup("admin@example.com")
	if _, err := f.st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	regTok := f.c.call("POST", "/v1/admin/hosts/tokens", adminTok, map[string]any{}, 201).obj(t)["token"].(string)
	hl := &hostlink.Client{BaseURL: f.c.url}
	reg, err := hl.Register(ctx, regTok, hostlink.Usage{Address: agent.Listener.Addr().String(), VCPUs: 4, MemoryMB: 4096, DiskMB: 10000})
	if err != nil {
		t.Fatal(err)
	}
	hostID.Store(reg.HostID)
	_, _, team := f.c.signup("user@example.com")
	f.token = auth.RandomToken("wrc_")
	f.capsule, err = f.st.CreateCapsule(ctx, store.Capsule{
		ID: store.NewID(store.PrefixCapsule), TeamID: team, TemplateID: "tpl-base", HostID: reg.HostID,
		Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 128, DiskSizeMB: 512, TimeoutSec: 60, AccessTokenHash: auth.HashToken(f.token),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *proxyFixture) get(t *testing.T, base, path, host string, hdr ...string) reply {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", base+path, nil)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return reply{res.StatusCode, b, res.Header}
}

// TestPortProxyHasItsOwnOrigin: capsule ports are served on the proxy
// listener only (path and subdomain forms), and what reaches the capsule
// carries no Wrenn credential.
func TestPortProxyHasItsOwnOrigin(t *testing.T) {
	f := newProxyFixture(t)
	id, port := f.capsule.ID, strconv.Itoa(f.port)
	path := "/proxy/" + id + "/" + port + "/x?keep=1"
	host := port + "-" + id + ".wrenn.test"
	userKey := auth.GenerateAPIKey().Plain

	// The API's listener serves neither form.
	for _, r := range []reply{
		f.get(t, f.c.url, path, "", "X-Wrenn-Access-Token", f.token),
		f.get(t, f.c.url, "/x", host, "X-Wrenn-Access-Token", f.token),
	} {
		var e map[string]string
		if r.status != http.StatusNotFound || json.Unmarshal(r.body, &e) != nil || e["code"] != "not_found" {
			t.Fatalf("API listener answered %d %s; want 404 with the error body", r.status, r.body)
		}
	}
	if len(f.received) != 0 {
		t.Fatal("a request on the API's listener reached the capsule")
	}

	creds := []string{
		"X-Wrenn-Access-Token", f.token,
		"X-API-Key", userKey,
		"Authorization", "Bearer " + userKey,
		"Authorization", "Basic dXNlcjo=",
		"Cookie", "wrenn_oauth_state=state; app=1",
	}
	for _, r := range []struct {
		name       string
		path, host string
	}{{"path form", path + "&token=" + userKey, ""}, {"subdomain form", "/x?keep=1&token=" + userKey, host}} {
		got := f.get(t, f.c.proxyURL, r.path, r.host, creds...)
		if got.status != 200 || string(got.body) != "from the capsule" {
			t.Fatalf("%s: %d %s", r.name, got.status, got.body)
		}
		h, q := <-f.received, <-f.queries
		if q != "keep=1" {
			t.Errorf("%s: query %q reached the capsule", r.name, q)
		}
		for name, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, userKey) || strings.Contains(v, f.token) || strings.Contains(v, "wrenn_") ||
					strings.Contains(v, f.c.srv.HostCredential(f.capsule.HostID)) {
					t.Errorf("%s: the capsule received %s: %s", r.name, name, v)
				}
			}
		}
		if !slices.Equal(h.Values("Authorization"), []string{"Basic dXNlcjo="}) || h.Get("Cookie") != "app=1" {
			t.Errorf("%s: Authorization %q, Cookie %q: the app's own values must stay", r.name, h.Values("Authorization"), h.Get("Cookie"))
		}
	}
}

// TestPortProxyNoExistenceOracle: an unknown capsule and a known one asked
// without a valid token get the same answer after the same store reads,
// in about the same time.
func TestPortProxyNoExistenceOracle(t *testing.T) {
	f := newProxyFixture(t)
	port := strconv.Itoa(f.port)
	known := "/proxy/" + f.capsule.ID + "/" + port + "/"
	unknown := "/proxy/" + store.NewID(store.PrefixCapsule) + "/" + port + "/"
	strip := func(r reply) reply { r.header = r.header.Clone(); r.header.Del("Date"); return r }
	ask := func(path string, hdr ...string) (reply, int64, int64) {
		c0, h0 := f.st.capsuleReads.Load(), f.st.hostReads.Load()
		r := strip(f.get(t, f.c.proxyURL, path, "", hdr...))
		return r, f.st.capsuleReads.Load() - c0, f.st.hostReads.Load() - h0
	}
	want, wc, wh := ask(unknown)
	if want.status != http.StatusNotFound {
		t.Fatalf("unknown capsule: %d %s", want.status, want.body)
	}
	for name, hdr := range map[string][]string{
		"no token":    nil,
		"wrong token": {"X-Wrenn-Access-Token", "wrc_wrong"},
		"API key":     {"X-API-Key", auth.GenerateAPIKey().Plain},
	} {
		got, gc, gh := ask(known, hdr...)
		if got.status != want.status || string(got.body) != string(want.body) || !equalHeaders(got.header, want.header) {
			t.Errorf("%s: %d %v %s; unknown capsule: %d %v %s", name, got.status, got.header, got.body, want.status, want.header, want.body)
		}
		if gc != wc || gh != wh {
			t.Errorf("%s: %d capsule and %d host reads; an unknown capsule costs %d and %d", name, gc, gh, wc, wh)
		}
	}
	// With the token the capsule answers (the fixture works).
	if r, _, _ := ask(known, "X-Wrenn-Access-Token", f.token); r.status != 200 {
		t.Fatalf("with the token: %d %s", r.status, r.body)
	}
	<-f.received
	<-f.queries

	// Timing: medians of interleaved requests.
	const n = 60
	var tk, tu []time.Duration
	for range n {
		s := time.Now()
		f.get(t, f.c.proxyURL, known, "")
		tk = append(tk, time.Since(s))
		s = time.Now()
		f.get(t, f.c.proxyURL, unknown, "")
		tu = append(tu, time.Since(s))
	}
	slices.Sort(tk)
	slices.Sort(tu)
	mk, mu := tk[n/2], tu[n/2]
	t.Logf("median answer: known capsule without token %v, unknown capsule %v", mk, mu)
	if d := mk - mu; d > time.Millisecond && float64(mk) > 2*float64(mu) {
		t.Errorf("a known capsule without token answers in %v, an unknown one in %v: the difference tells them apart", mk, mu)
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
