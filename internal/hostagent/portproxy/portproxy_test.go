package portproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// upstream is a real HTTP server standing in for a server in a capsule.
func upstream(t *testing.T) (port int) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer func() { _ = c.CloseNow() }()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), b...)); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/redirect-root", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/landed?x=1", http.StatusFound)
	})
	mux.HandleFunc("/redirect-abs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "http://"+r.Host+"/abs/")
		w.WriteHeader(http.StatusFound)
	})
	mux.HandleFunc("/redirect-away", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "https://example.com/elsewhere")
		w.WriteHeader(http.StatusFound)
	})
	// Dispatch without ServeMux's path cleaning, so the test sees the
	// path exactly as the proxy forwarded it.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo", "/redirect-root", "/redirect-abs", "/redirect-away":
			h, _ := mux.Handler(r)
			h.ServeHTTP(w, r)
		default:
			fmt.Fprintf(w, "path=%s raw=%s query=%s host=%s authz=%s", r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Host, r.Header.Get("Authorization"))
		}
	}))
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ = strconv.Atoi(p)
	return port
}

func newProxy(t *testing.T, known map[string]bool) (*Proxy, *httptest.Server) {
	t.Helper()
	p := New(Config{
		Resolve: func(_ context.Context, id string) (netip.Addr, error) {
			if !known[id] {
				return netip.Addr{}, ErrNoCapsule
			}
			return netip.MustParseAddr("127.0.0.1"), nil
		},
		DialBackoff: 100 * time.Millisecond,
		Logger:      slog.New(slog.DiscardHandler),
	})
	front := httptest.NewServer(p)
	t.Cleanup(func() { front.Close(); p.Close() })
	return p, front
}

func get(t *testing.T, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	c.CloseIdleConnections()
	return resp, string(b)
}

func TestForwarding(t *testing.T) {
	port := upstream(t)
	_, front := newProxy(t, map[string]bool{"cl-a": true})
	base := front.URL + "/proxy/cl-a/" + strconv.Itoa(port)
	tests := []struct {
		name, path, want string
	}{
		{"bare port", "", "path=/ raw= query="},
		{"trailing slash kept", "/dir/", "path=/dir/ raw= query="},
		{"no cleaning", "/a//b/../c", "path=/a//b/../c raw= query="},
		{"escaped kept", "/x%2Fy", "path=/x/y raw=/x%2Fy query="},
		{"query", "/q?a=1&b=2", "path=/q raw= query=a=1&b=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, base+tt.path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := body[:len(tt.want)]; got != tt.want {
				t.Errorf("got %q, want prefix %q", body, tt.want)
			}
		})
	}
	t.Run("unknown capsule", func(t *testing.T) {
		resp, _ := get(t, front.URL+"/proxy/cl-zzz/"+strconv.Itoa(port)+"/", nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("got %d, want 404", resp.StatusCode)
		}
	})
	t.Run("bad port", func(t *testing.T) {
		resp, _ := get(t, front.URL+"/proxy/cl-a/99999/", nil)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("got %d, want 400", resp.StatusCode)
		}
	})
}

func TestLocationRewrite(t *testing.T) {
	port := upstream(t)
	_, front := newProxy(t, map[string]bool{"cl-a": true})
	prefix := "/proxy/cl-a/" + strconv.Itoa(port)
	tests := []struct {
		name, path string
		hdr        map[string]string
		want       string
	}{
		{"root-relative", "/redirect-root", nil, prefix + "/landed?x=1"},
		{"absolute to upstream", "/redirect-abs", nil, prefix + "/abs/"},
		{"elsewhere untouched", "/redirect-away", nil, "https://example.com/elsewhere"},
		{"caller prefix", "/redirect-root", map[string]string{PrefixHeader: "/public/cl-a/8080"}, "/public/cl-a/8080/landed?x=1"},
		{"subdomain form (empty prefix)", "/redirect-abs", map[string]string{PrefixHeader: ""}, "/abs/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := get(t, front.URL+prefix+tt.path, tt.hdr)
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Get("Location"); got != tt.want {
				t.Errorf("Location: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWebSocket(t *testing.T) {
	port := upstream(t)
	_, front := newProxy(t, map[string]bool{"cl-a": true})
	ctx := testutil.Context(t, testutil.Short)
	url := "ws" + front.URL[len("http"):] + "/proxy/cl-a/" + strconv.Itoa(port) + "/echo"
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d", resp.StatusCode)
	}
	defer func() { _ = c.CloseNow() }()
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(b), "echo:"+msg; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
}

func TestDialRetry(t *testing.T) {
	// Reserve a port, free it, and start the server only after the first
	// dial has failed: the retry with backoff must reach it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	_, p, _ := net.SplitHostPort(addr)
	_, front := newProxy(t, map[string]bool{"cl-a": true})

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "late server") }), ReadHeaderTimeout: time.Second}
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(150 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("re-listen: %v", err)
			return
		}
		_ = srv.Serve(l)
	})
	t.Cleanup(func() { _ = srv.Close(); wg.Wait() })

	start := time.Now()
	resp, body := get(t, front.URL+"/proxy/cl-a/"+p+"/", nil)
	if resp.StatusCode != http.StatusOK || body != "late server" {
		t.Fatalf("got %d %q, want 200 from the late server", resp.StatusCode, body)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("answered after %v: the first dial cannot have succeeded", d)
	}

	// Nothing ever listens: three attempts (0, +100 ms, +200 ms), then 502.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	_, p2, _ := net.SplitHostPort(ln2.Addr().String())
	_ = ln2.Close()
	start = time.Now()
	resp, body = get(t, front.URL+"/proxy/cl-a/"+p2+"/", nil)
	d := time.Since(start)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
	if d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about 300 ms (linear backoff 100+200 ms)", d)
	}
}

func TestCacheAndEvict(t *testing.T) {
	port := upstream(t)
	p, front := newProxy(t, map[string]bool{"cl-a": true, "cl-b": true})
	ps := strconv.Itoa(port)
	for _, path := range []string{"/proxy/cl-a/" + ps + "/x", "/proxy/cl-a/" + ps + "/y", "/proxy/cl-b/" + ps + "/"} {
		resp, _ := get(t, front.URL+path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	// A different Host is a different cache entry (subdomain form).
	req, _ := http.NewRequest(http.MethodGet, front.URL+"/proxy/cl-a/"+ps+"/", nil)
	req.Host = "8080-cl-a.example.test"
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = r2.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if got := p.Cached(); got != 3 {
		t.Fatalf("cached: got %d, want 3 (cl-a twice by host, cl-b once)", got)
	}
	p.Evict("cl-a")
	if got := p.Cached(); got != 1 {
		t.Fatalf("after evicting cl-a: got %d, want 1", got)
	}
	p.Evict("cl-b")
	if got := p.Cached(); got != 0 {
		t.Fatalf("after evicting cl-b: got %d, want 0", got)
	}
}

// TestStripsWrennCredentials: whatever reaches the agent (the control
// plane strips these already), Wrenn credentials do not reach the capsule;
// Basic auth (envd's user) and the app's own credentials do.
func TestStripsWrennCredentials(t *testing.T) {
	got := make(chan *http.Request, 1)
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Clone(context.Background())
	}))
	t.Cleanup(rec.Close)
	_, ps, _ := net.SplitHostPort(rec.Listener.Addr().String())
	_, front := newProxy(t, map[string]bool{"cl-a": true})
	jwtLike := "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ3cmVubiIsInN1YiI6InVzLTEifQ.c2ln" // iss "wrenn"
	req, _ := http.NewRequest(http.MethodGet, front.URL+"/proxy/cl-a/"+ps+"/p?token=wrn_abcdefgh&wrenn_access_token=wrc_x&keep=1", nil)
	req.Header.Set("X-API-Key", "wrn_abcdefgh")
	req.Header.Add("Authorization", "Bearer "+jwtLike)
	req.Header.Add("Authorization", "Basic dXNlcjo=")
	req.Header.Set("Cookie", "wrenn_oauth_state=s; app=1")
	req.Header.Set("X-Wrenn-Access-Token", "wrc_x")
	req.Header.Set(PrefixHeader, "")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	r := <-got
	if r.URL.RawQuery != "keep=1" {
		t.Errorf("query %q, want keep=1", r.URL.RawQuery)
	}
	if v := r.Header.Values("Authorization"); len(v) != 1 || v[0] != "Basic dXNlcjo=" {
		t.Errorf("Authorization %q, want only the Basic value", v)
	}
	if v := r.Header.Get("Cookie"); v != "app=1" {
		t.Errorf("Cookie %q, want app=1", v)
	}
	for _, h := range []string{"X-Api-Key", "X-Wrenn-Access-Token", PrefixHeader} {
		if v, ok := r.Header[h]; ok {
			t.Errorf("%s reached the capsule: %q", h, v)
		}
	}
}

// TestEnvdPortRefused: envd (port 49983) is reached through the API only;
// the proxy answers exactly as for an unknown capsule.
func TestEnvdPortRefused(t *testing.T) {
	_, front := newProxy(t, map[string]bool{"cl-a": true})
	unknown, ubody := get(t, front.URL+"/proxy/cl-zzz/8080/", nil)
	envd, ebody := get(t, front.URL+"/proxy/cl-a/49983/x", nil)
	if unknown.StatusCode != http.StatusNotFound || envd.StatusCode != unknown.StatusCode || ebody != ubody ||
		envd.Header.Get("Content-Type") != unknown.Header.Get("Content-Type") {
		t.Fatalf("envd port answered %d %q; an unknown capsule answers %d %q", envd.StatusCode, ebody, unknown.StatusCode, ubody)
	}
}
