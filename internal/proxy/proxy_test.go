package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/hostagent/portproxy"
	"github.com/wrenn-dev/wrenn/internal/proxy"
)

const (
	capsuleID = "cl-abcdefghjkmnpqrs"
	secret    = "host-secret"
	token     = "wrc_access"
	domain    = "wrenn.test"
)

// chain is a real upstream app, the agent's real port proxy in front of it
// (behind a host-secret check like the agent's), and the control plane's
// proxy in front of that.
type chain struct {
	port     int
	upstream string
	cp       *httptest.Server
	p        *proxy.Proxy
	target   *proxy.Target
}

// newAgent is an agent's real port proxy (to loopback) behind a
// host-secret check like the agent's.
func newAgent(t *testing.T, hostSecret string) *httptest.Server {
	t.Helper()
	pp := portproxy.New(portproxy.Config{Resolve: func(context.Context, string) (netip.Addr, error) {
		return netip.MustParseAddr("127.0.0.1"), nil
	}})
	t.Cleanup(pp.Close)
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Wrenn-Host-Secret") != hostSecret {
			http.Error(w, "bad host secret", http.StatusUnauthorized)
			return
		}
		r.Header.Del("X-Wrenn-Host-Secret")
		pp.ServeHTTP(w, r)
	}))
	t.Cleanup(agent.Close)
	return agent
}

func newChain(t *testing.T) *chain {
	t.Helper()
	// A bare handler (no ServeMux) so paths arrive uncleaned.
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect-root":
			http.Redirect(w, r, "/target?a=1", http.StatusFound)
		case "/redirect-abs":
			http.Redirect(w, r, "http://"+r.Host+"/abs/", http.StatusFound)
		case "/redirect-upstream":
			w.Header().Set("Location", "http://"+r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()+"/up")
			w.WriteHeader(http.StatusFound)
		case "/redirect-external":
			http.Redirect(w, r, "https://example.com/elsewhere", http.StatusFound)
		case "/record":
			// What capsule code receives, in full.
			_ = json.NewEncoder(w).Encode(map[string]any{
				"header": r.Header, "query": r.URL.RawQuery, "cookies": r.Header.Values("Cookie"),
			})
		case "/hang":
			// Answers only when the request is cancelled end to end.
			<-r.Context().Done()
			return
		case "/ws":
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, b, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte("echo:"), b...)); err != nil {
					return
				}
			}
		default:
			fmt.Fprintf(w, "path=%s query=%s proto=%d secret=%q token=%q xff=%q",
				r.URL.EscapedPath(), r.URL.RawQuery, r.ProtoMajor, r.Header.Get("X-Wrenn-Host-Secret"),
				r.Header.Get(proxy.AccessTokenHeader), r.Header.Get("X-Forwarded-For"))
		}
	})
	up := httptest.NewServer(app)
	t.Cleanup(up.Close)
	_, portStr, _ := net.SplitHostPort(up.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)

	agent := newAgent(t, secret)

	c := &chain{port: port, upstream: up.Listener.Addr().String()}
	c.target = &proxy.Target{AgentURL: agent.URL, HostSecret: secret, AccessTokenHash: auth.HashToken(token), Running: true}
	c.p = proxy.New(proxy.Config{Domain: domain, Resolve: func(_ context.Context, id string) (proxy.Target, error) {
		if id != capsuleID {
			return proxy.Target{}, proxy.ErrNotFound
		}
		return *c.target, nil
	}})
	t.Cleanup(c.p.Close)
	// The proxy's own listener, as the control plane serves it.
	c.cp = httptest.NewServer(c.p.Handler())
	t.Cleanup(c.cp.Close)
	return c
}

func noRedirect() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (c *chain) get(t *testing.T, path, host string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", c.cp.URL+path, nil)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := noRedirect().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

func TestPathFormForwardsAndRewrites(t *testing.T) {
	c := newChain(t)
	pfx := "/proxy/" + capsuleID + "/" + strconv.Itoa(c.port)
	tok := []string{proxy.AccessTokenHeader, token, "X-Forwarded-For", "6.6.6.6"}
	tests := []struct {
		name, path   string
		wantStatus   int
		wantBody     string
		wantLocation string
	}{
		{"trailing slash kept", pfx + "/dir/sub/", 200, "path=/dir/sub/ ", ""},
		{"no slash kept", pfx + "/dir/sub", 200, "path=/dir/sub ", ""},
		{"root", pfx + "/", 200, "path=/ ", ""},
		{"bare port", pfx, 200, "path=/ ", ""},
		{"double slash not cleaned", pfx + "/a//b/../c", 200, "path=/a//b/../c", ""},
		{"escaped kept", pfx + "/a%2Fb", 200, "path=/a%2Fb", ""},
		{"query kept", pfx + "/q?x=1&y=2", 200, "query=x=1&y=2 ", ""},
		{"root-relative location", pfx + "/redirect-root", 302, "", pfx + "/target?a=1"},
		{"absolute location to public host", pfx + "/redirect-abs", 302, "", pfx + "/abs/"},
		{"absolute location to upstream", pfx + "/redirect-upstream", 302, "", pfx + "/up"},
		{"external location untouched", pfx + "/redirect-external", 302, "", "https://example.com/elsewhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, h := c.get(t, tt.path, "", tok...)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", status, tt.wantStatus, body)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Fatalf("body = %q, want it to contain %q", body, tt.wantBody)
			}
			if got := h.Get("Location"); got != tt.wantLocation {
				t.Fatalf("Location = %q, want %q", got, tt.wantLocation)
			}
			if status == 200 {
				// HTTP/1.1 upstream, secrets stripped, client XFF replaced.
				for _, want := range []string{"proto=1", `secret=""`, `token=""`, `xff="127.0.0.1"`} {
					if !strings.Contains(body, want) {
						t.Fatalf("body = %q, want %s", body, want)
					}
				}
			}
		})
	}
}

func TestSubdomainFormStripsPrefix(t *testing.T) {
	c := newChain(t)
	host := strconv.Itoa(c.port) + "-" + capsuleID + "." + domain
	tok := []string{proxy.AccessTokenHeader, token}
	if status, body, _ := c.get(t, "/dir/", host, tok...); status != 200 || !strings.Contains(body, "path=/dir/ ") {
		t.Fatalf("GET /dir/ = %d %q", status, body)
	}
	for path, want := range map[string]string{
		"/redirect-root":     "/target?a=1",
		"/redirect-abs":      "/abs/",
		"/redirect-upstream": "/up",
		"/redirect-external": "https://example.com/elsewhere",
	} {
		_, _, h := c.get(t, path, host, tok...)
		if got := h.Get("Location"); got != want {
			t.Errorf("%s: Location = %q, want %q", path, got, want)
		}
	}
	// Hosts that do not match fall through to the path form, where /dir/
	// is nothing.
	if status, _, _ := c.get(t, "/dir/", "other.example", tok...); status != 404 {
		t.Fatalf("non-proxy host: status %d, want 404", status)
	}
}

func TestAccessControl(t *testing.T) {
	c := newChain(t)
	pfx := "/proxy/" + capsuleID + "/" + strconv.Itoa(c.port)
	// Without a valid token a private capsule answers like an unknown one
	// (TestNoExistenceOracle compares the answers in full).
	if status, _, _ := c.get(t, pfx+"/", ""); status != 404 {
		t.Fatalf("no token: %d, want 404", status)
	}
	if status, _, _ := c.get(t, pfx+"/", "", proxy.AccessTokenHeader, "wrc_wrong"); status != 404 {
		t.Fatalf("wrong token: %d, want 404", status)
	}
	status, body, _ := c.get(t, pfx+"/x?"+proxy.AccessTokenParam+"="+token+"&keep=1", "")
	if status != 200 || !strings.Contains(body, "query=keep=1 ") {
		t.Fatalf("query token: %d %q (the token must be stripped, other params kept)", status, body)
	}
	c.target.Public = true
	if status, _, _ := c.get(t, pfx+"/", ""); status != 200 {
		t.Fatalf("public capsule: %d, want 200", status)
	}
	c.target.Running = false
	if status, _, _ := c.get(t, pfx+"/", ""); status != 409 {
		t.Fatalf("stopped capsule: %d, want 409", status)
	}
	if status, _, _ := c.get(t, "/proxy/cl-unknown0000000000/80/", ""); status != 404 {
		t.Fatalf("unknown capsule: %d, want 404", status)
	}
	for _, bad := range []string{"/proxy/" + capsuleID + "/0/", "/proxy/" + capsuleID + "/99999/", "/proxy/" + capsuleID + "/x/", "/proxy/" + capsuleID} {
		if status, _, _ := c.get(t, bad, ""); status != 400 {
			t.Errorf("%s: %d, want 400", bad, status)
		}
	}
}

func TestWebSocketPassthrough(t *testing.T) {
	c := newChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := strings.Replace(c.cp.URL, "http://", "ws://", 1) + "/proxy/" + capsuleID + "/" + strconv.Itoa(c.port) + "/ws?" + proxy.AccessTokenParam + "=" + token
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial through proxy: %v", err)
	}
	defer conn.CloseNow()
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != "echo:"+msg {
			t.Fatalf("got %q", b)
		}
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")
}

func TestEvict(t *testing.T) {
	c := newChain(t)
	c.target.Public = true
	c.get(t, "/proxy/"+capsuleID+"/"+strconv.Itoa(c.port)+"/", "")
	if c.p.Cached() != 1 {
		t.Fatalf("cached = %d, want 1", c.p.Cached())
	}
	c.p.Evict(capsuleID)
	if c.p.Cached() != 0 {
		t.Fatalf("after evict cached = %d", c.p.Cached())
	}
}

// TestMovedCapsuleNotEvicted: a capsule that moved to another host, on a
// replica that did not run the move (so nothing evicted its cached proxy),
// is proxied to its new host with that host's secret — not to the old
// host with the new secret (which answered 401).
func TestMovedCapsuleNotEvicted(t *testing.T) {
	c := newChain(t)
	c.target.Public = true
	path := "/proxy/" + capsuleID + "/" + strconv.Itoa(c.port) + "/"
	if code, _, _ := c.get(t, path, ""); code != http.StatusOK {
		t.Fatalf("before the move: %d", code)
	}
	// The new host: its own agent, its own secret; the old one refuses it.
	const newSecret = "other-host-secret"
	moved := newAgent(t, newSecret)
	c.target.AgentURL, c.target.HostSecret = moved.URL, newSecret
	if code, body, _ := c.get(t, path, ""); code != http.StatusOK {
		t.Fatalf("after the move: %d %q", code, body)
	}
}

func TestRewriteLocation(t *testing.T) {
	tests := []struct{ loc, prefix, want string }{
		{"/a/", "/proxy/cl-x/80", "/proxy/cl-x/80/a/"},
		{"/proxy/cl-x/80/a", "/proxy/cl-x/80", "/proxy/cl-x/80/a"},
		{"//evil.example/x", "/proxy/cl-x/80", "//evil.example/x"},
		{"relative/path", "/proxy/cl-x/80", "relative/path"},
		{"http://agent:1/p?q=1#f", "/proxy/cl-x/80", "/proxy/cl-x/80/p?q=1#f"},
		{"http://agent:1", "", "/"},
		{"http://public.example/p", "", "/p"},
		{"http://other.example/p", "", "http://other.example/p"},
	}
	for _, tt := range tests {
		if got := proxy.RewriteLocation(tt.loc, tt.prefix, "agent:1", "public.example"); got != tt.want {
			t.Errorf("RewriteLocation(%q, %q) = %q, want %q", tt.loc, tt.prefix, got, tt.want)
		}
	}
}

func TestParseHost(t *testing.T) {
	tests := []struct {
		host    string
		id      string
		port    int
		matches bool
	}{
		{"8080-cl-abc.wrenn.test", "cl-abc", 8080, true},
		{"8080-cl-abc.wrenn.test:443", "cl-abc", 8080, true},
		{"8080-CL-ABC.WRENN.TEST", "cl-abc", 8080, true},
		{"cl-abc.wrenn.test", "", 0, false},
		{"0-cl-abc.wrenn.test", "", 0, false},
		{"70000-cl-abc.wrenn.test", "", 0, false},
		{"8080-cl-abc.sub.wrenn.test", "", 0, false},
		{"wrenn.test", "", 0, false},
		{"8080-cl-abc.evilwrenn.test", "", 0, false},
	}
	for _, tt := range tests {
		id, port, ok := proxy.ParseHost(tt.host, domain)
		if ok != tt.matches || id != tt.id || port != tt.port {
			t.Errorf("ParseHost(%q) = %q %d %v, want %q %d %v", tt.host, id, port, ok, tt.id, tt.port, tt.matches)
		}
	}
}

// TestHungUpstreamIsCancelled: a client that gives up on a hung upstream
// cancels the request all the way to the capsule (goleak in TestMain
// checks nothing is left behind).
func TestHungUpstreamIsCancelled(t *testing.T) {
	c := newChain(t)
	c.target.Public = true
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.cp.URL+"/proxy/"+capsuleID+"/"+strconv.Itoa(c.port)+"/hang", nil)
	start := time.Now()
	res, err := http.DefaultClient.Do(req)
	if err == nil {
		_ = res.Body.Close()
		t.Fatalf("hung upstream answered %d", res.StatusCode)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the client was not released on cancellation")
	}
}
