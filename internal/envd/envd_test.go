package envd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type harness struct {
	srv    *Server
	url    string
	addr   string
	drops  *atomic.Int64
	memPct *atomic.Int64 // used memory in percent for the fake meminfo
	clock  *atomic.Value
}

func start(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{drops: &atomic.Int64{}, memPct: &atomic.Int64{}, clock: &atomic.Value{}}
	h.memPct.Store(10)
	cfg := Config{
		RunDir:         t.TempDir(),
		PrepareTimeout: time.Minute,
		Reclaim: ReclaimConfig{
			Interval: time.Hour, // tests drive tick() directly
			MemInfo: func() (uint64, uint64, error) {
				return 100, uint64(100 - h.memPct.Load()), nil
			},
			Drop: func() error { h.drops.Add(1); return nil },
		},
		SetClock: func(tm time.Time) error { h.clock.Store(tm); return nil },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	h.srv, h.addr, h.url = srv, ln.Addr().String(), "http://"+ln.Addr().String()
	return h
}

func (h *harness) do(t *testing.T, method, path, body string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: testutil.Short, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestHealthVersion(t *testing.T) {
	h := start(t, nil)
	if code, _ := h.do(t, "GET", "/health", "", nil); code != http.StatusOK {
		t.Fatalf("health = %d, want 200", code)
	}
	code, body := h.do(t, "GET", "/version", "", nil)
	var v map[string]string
	if code != http.StatusOK || json.Unmarshal(body, &v) != nil || v["version"] == "" || v["commit"] == "" {
		t.Fatalf("version = %d %s, want 200 JSON with version and commit", code, body)
	}
	if code, _ := h.do(t, "POST", "/health", "", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /health = %d, want 405", code)
	}
}

func TestMetrics(t *testing.T) {
	t.Run("real system", func(t *testing.T) {
		h := start(t, nil)
		code, body := h.do(t, "GET", "/metrics", "", nil)
		if code != http.StatusOK {
			t.Fatalf("metrics = %d %s", code, body)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"mem_total", "mem_used", "cpu_count", "cpu_used_pct", "disk_total", "disk_used", "ts"} {
			if _, ok := m[k]; !ok {
				t.Errorf("metrics lacks %q: %s", k, body)
			}
		}
		if m["mem_total"].(float64) <= 0 || m["disk_total"].(float64) <= 0 || m["cpu_count"].(float64) < 1 {
			t.Errorf("implausible metrics: %s", body)
		}
	})
	t.Run("guest side total minus available", func(t *testing.T) {
		proc := t.TempDir()
		meminfo := "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     600 kB\nCached:           300 kB\n"
		if err := os.WriteFile(filepath.Join(proc, "meminfo"), []byte(meminfo), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, "stat"), []byte("cpu  10 0 10 100 0 0 0 0 0 0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		h := start(t, func(c *Config) { c.Metrics = MetricsConfig{ProcDir: proc, CgroupDir: t.TempDir()} })
		_, body := h.do(t, "GET", "/metrics", "", nil)
		var m Metrics
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		if got, want := m.MemUsed, uint64(400*1024); got != want {
			t.Errorf("mem_used = %d, want %d (total - available)", got, want)
		}
		if got, want := m.MemTotal, uint64(1000*1024); got != want {
			t.Errorf("mem_total = %d, want %d", got, want)
		}
	})
	t.Run("cgroup v2 limit below total", func(t *testing.T) {
		proc, cg := t.TempDir(), t.TempDir()
		must(t, os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal: 8000000 kB\nMemAvailable: 7000000 kB\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(proc, "stat"), []byte("cpu  1 0 1 1 0 0 0 0 0 0\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(cg, "memory.max"), []byte("536870912\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(cg, "memory.current"), []byte("209715200\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(cg, "memory.stat"), []byte("file 104857600\ninactive_file 104857600\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(cg, "cpu.max"), []byte("150000 100000\n"), 0o644))
		h := start(t, func(c *Config) { c.Metrics = MetricsConfig{ProcDir: proc, CgroupDir: cg} })
		_, body := h.do(t, "GET", "/metrics", "", nil)
		var m Metrics
		must(t, json.Unmarshal(body, &m))
		if m.MemTotal != 536870912 || m.MemUsed != 104857600 {
			t.Errorf("mem_total/used = %d/%d, want 536870912/104857600", m.MemTotal, m.MemUsed)
		}
		if m.CPUCount != 2 {
			t.Errorf("cpu_count = %d, want 2 (quota 1.5 CPUs rounded up)", m.CPUCount)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestInit(t *testing.T) {
	h := start(t, nil)
	future := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	body := fmt.Sprintf(`{"capsule_id":"cl-abc123","template_id":"base","env_vars":{"FOO":"bar"},"default_workdir":"/tmp","timestamp":%q}`, future.Format(time.RFC3339))
	if code, b := h.do(t, "POST", "/init", body, nil); code != http.StatusNoContent {
		t.Fatalf("init = %d %s", code, b)
	}
	for name, want := range map[string]string{".WRENN_TEMPLATE_ID": "base", ".WRENN_CAPSULE_ID": "cl-abc123"} {
		got, err := os.ReadFile(filepath.Join(h.srv.cfg.RunDir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q (%v), want %q", name, got, err, want)
		}
	}
	if got, _ := h.clock.Load().(time.Time); !got.Equal(future) {
		t.Errorf("clock set to %v, want %v (guest behind)", got, future)
	}
	_, envs := h.do(t, "GET", "/envs", "", nil)
	var m map[string]string
	must(t, json.Unmarshal(envs, &m))
	if m["FOO"] != "bar" {
		t.Errorf("/envs = %s, want FOO=bar", envs)
	}
	if h.srv.Defaults().Workdir() != "/tmp" {
		t.Errorf("workdir = %q", h.srv.Defaults().Workdir())
	}

	// An empty template id on a later /init never overwrites the stored one
	// (the design notes' bug: resume wrote an empty template id).
	if code, _ := h.do(t, "POST", "/init", `{"capsule_id":"cl-abc123","template_id":""}`, nil); code != http.StatusNoContent {
		t.Fatalf("second init = %d", code)
	}
	if got, _ := os.ReadFile(filepath.Join(h.srv.cfg.RunDir, ".WRENN_TEMPLATE_ID")); string(got) != "base" {
		t.Errorf("template id overwritten with %q", got)
	}
	// A past timestamp does not move the clock back.
	h.clock.Store(time.Time{})
	h.do(t, "POST", "/init", `{"timestamp":"2001-01-01T00:00:00Z"}`, nil)
	if got, _ := h.clock.Load().(time.Time); !got.IsZero() {
		t.Errorf("clock moved back to %v", got)
	}
	// E2B's camelCase spelling.
	if code, _ := h.do(t, "POST", "/init", `{"envVars":{"CAMEL":"1"}}`, nil); code != http.StatusNoContent {
		t.Fatalf("camelCase init = %d", code)
	}
	if h.srv.Defaults().Envs()["CAMEL"] != "1" {
		t.Error("camelCase envVars not applied")
	}
}

func TestInitBadInput(t *testing.T) {
	h := start(t, nil)
	cases := []struct{ name, body string }{
		{"malformed json", `{"capsule_id":`},
		{"wrong type", `{"env_vars":"x"}`},
		{"bad capsule id", `{"capsule_id":"../../etc"}`},
		{"relative workdir", `{"default_workdir":"tmp"}`},
		{"unknown user", `{"default_user":"no-such-user-wrenn"}`},
		{"bad env name", `{"env_vars":{"A=B":"c"}}`},
		{"huge body", `{"env_vars":{"A":"` + strings.Repeat("x", maxInitBody) + `"}}`},
		{"not an object", `[1,2,3]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := h.do(t, "POST", "/init", tc.body, nil)
			var e apiError
			if code != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || e.Code != 400 || e.Message == "" {
				t.Fatalf("got %d %s, want 400 with a JSON {code,message}", code, body)
			}
		})
	}
	if code, _ := h.do(t, "GET", "/health", "", nil); code != http.StatusOK {
		t.Fatal("envd unhealthy after bad input")
	}
}

func TestHugeHeaders(t *testing.T) {
	h := start(t, nil)
	code, _ := h.do(t, "GET", "/health", "", map[string]string{"X-Big": strings.Repeat("a", 128<<10)})
	if code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("got %d, want 431", code)
	}
}

func TestAccessToken(t *testing.T) {
	h := start(t, nil)
	if code, _ := h.do(t, "POST", "/init", `{"access_token":"s3cret"}`, nil); code != http.StatusNoContent {
		t.Fatal("init failed")
	}
	for _, tc := range []struct {
		name  string
		hdr   map[string]string
		want  int
		route string
	}{
		{"missing", nil, 401, "/envs"},
		{"wrong", map[string]string{AccessTokenHeader: "nope"}, 401, "/envs"},
		{"right", map[string]string{AccessTokenHeader: "s3cret"}, 200, "/envs"},
		{"health needs it too", nil, 401, "/health"},
		{"init needs it too", nil, 401, "/init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := "GET"
			if tc.route == "/init" {
				method = "POST"
			}
			if code, _ := h.do(t, method, tc.route, `{}`, tc.hdr); code != tc.want {
				t.Fatalf("got %d, want %d", code, tc.want)
			}
		})
	}
	// The plain token is not kept anywhere in the server.
	if bytes.Contains(h.srv.token.hash[:], []byte("s3cret")) || h.srv.token.hash == [32]byte{} {
		t.Fatal("token stored in plain text")
	}
}

func TestReclaimerGatedDuringPrepare(t *testing.T) {
	h := start(t, nil)
	h.memPct.Store(90)
	if !h.srv.reclaim.tick() || h.drops.Load() != 1 {
		t.Fatalf("reclaimer did not drop at 90%% used (drops=%d)", h.drops.Load())
	}
	h.memPct.Store(50)
	if h.srv.reclaim.tick() {
		t.Fatal("reclaimer dropped at 50% used")
	}
	h.memPct.Store(95)
	if code, b := h.do(t, "POST", "/snapshot/prepare", "", nil); code != http.StatusOK {
		t.Fatalf("prepare = %d %s", code, b)
	}
	for range 3 {
		if h.srv.reclaim.tick() {
			t.Fatal("reclaimer dropped caches while a snapshot was being prepared")
		}
	}
	if h.drops.Load() != 1 {
		t.Fatalf("drops = %d, want 1", h.drops.Load())
	}
	if code, _ := h.do(t, "POST", "/init", `{}`, nil); code != http.StatusNoContent {
		t.Fatal("init failed")
	}
	if !h.srv.reclaim.tick() {
		t.Fatal("reclaimer not re-enabled by /init")
	}
}

func TestPrepareWaitsForRunningDrop(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	h := start(t, func(c *Config) {
		c.Reclaim.Drop = func() error { close(entered); <-release; return nil }
	})
	h.memPct.Store(99)
	go h.srv.reclaim.tick()
	<-entered
	done := make(chan struct{})
	go func() { h.do(t, "POST", "/snapshot/prepare", "", nil); close(done) }()
	select {
	case <-done:
		t.Fatal("prepare returned while a cache drop was still running")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(testutil.Short):
		t.Fatal("prepare never returned")
	}
}

func TestPrepareTimeoutReenables(t *testing.T) {
	h := start(t, func(c *Config) { c.PrepareTimeout = 100 * time.Millisecond })
	h.do(t, "POST", "/snapshot/prepare", "", nil)
	if !h.srv.reclaim.isPaused() {
		t.Fatal("reclaimer not paused by prepare")
	}
	testutil.Eventually(t, testutil.Short, func() bool { return !h.srv.reclaim.isPaused() }, "prepare timeout re-enables the reclaimer")
}

// rawConn opens a TCP connection and sends an unfinished request so that the
// server sees it as active (not idle).
func rawConn(t *testing.T, addr string, partial bool) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if partial {
		if _, err := c.Write([]byte("GET /health HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// closedByPeer reports whether the server closed c.
func closedByPeer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || (err != nil && !isTimeout(err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestInitClosesPreSnapshotConnections(t *testing.T) {
	h := start(t, nil)

	// An idle keep-alive connection: closed by prepare.
	idle := rawConn(t, h.addr, false)
	if _, err := idle.Write([]byte("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()

	// A busy connection (mid-request) survives prepare but is a zombie after restore.
	busy := rawConn(t, h.addr, true)
	testutil.Eventually(t, testutil.Short, func() bool { return h.srv.conns.count() == 2 }, "server tracks both connections")

	if code, _ := h.do(t, "POST", "/snapshot/prepare", "", nil); code != http.StatusOK {
		t.Fatal("prepare failed")
	}
	if !closedByPeer(idle) {
		t.Fatal("prepare did not close the idle keep-alive connection")
	}

	// After "restore": a new connection, then /init over its own keep-alive connection.
	fresh := rawConn(t, h.addr, true)
	initConn := rawConn(t, h.addr, false)
	testutil.Eventually(t, testutil.Short, func() bool { return h.srv.conns.count() >= 3 }, "server tracks new connections")
	body := `{"capsule_id":"cl-x"}`
	fmt.Fprintf(initConn, "POST /init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	br := bufio.NewReader(initConn)
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("init over raw conn: %v %v", resp, err)
	}
	_ = resp.Body.Close()

	if !closedByPeer(busy) {
		t.Error("/init did not close the pre-snapshot connection")
	}
	// The /init connection itself stays usable (keep-alives are back on).
	if _, err := initConn.Write([]byte("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/init connection closed or broken: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	// The post-restore connection can finish its request.
	if _, err := fresh.Write([]byte("\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(fresh), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("post-restore connection was closed: %v %v", resp, err)
	}
	_ = resp.Body.Close()
}

func TestConcurrentInitAndPrepare(t *testing.T) {
	h := start(t, nil)
	// /init closes connections opened before the last prepare, so some of
	// these racing requests are cut off by design: only the end state and the
	// absence of deadlocks and panics matter here.
	var wg sync.WaitGroup
	c := &http.Client{Timeout: testutil.Short}
	for i := range 20 {
		wg.Go(func() {
			path, body := "/snapshot/prepare", ""
			if i%2 == 1 {
				path, body = "/init", fmt.Sprintf(`{"env_vars":{"K%d":"v"}}`, i)
			}
			if resp, err := c.Post(h.url+path, "application/json", strings.NewReader(body)); err == nil {
				_ = resp.Body.Close()
			}
		})
	}
	wg.Wait()
	c.CloseIdleConnections()
	// Handlers of cut-off requests may still be running; wait until every
	// connection (and so every handler) is gone before the final /init.
	testutil.Eventually(t, testutil.Short, func() bool { return h.srv.conns.count() == 0 }, "all connections closed")
	if code, _ := h.do(t, "POST", "/init", `{}`, nil); code != http.StatusNoContent {
		t.Fatal("init failed")
	}
	if h.srv.reclaim.isPaused() {
		t.Fatal("reclaimer still paused after the final /init")
	}
}

func FuzzInitBody(f *testing.F) {
	for _, s := range []string{`{}`, `{"capsule_id":"cl-1","env_vars":{"A":"b"}}`, `{"timestamp":"2020-01-01T00:00:00Z"}`, `[`, `{"default_workdir":"/x"}`} {
		f.Add(s)
	}
	srv, err := New(Config{RunDir: f.TempDir(), SetClock: func(time.Time) error { return nil }})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		req, _ := http.NewRequest("POST", "/init", strings.NewReader(body))
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, req)
		if rec.code != http.StatusNoContent && rec.code != http.StatusBadRequest {
			t.Fatalf("status %d for %q", rec.code, body)
		}
		if rec.code == http.StatusBadRequest {
			var e apiError
			if json.Unmarshal(rec.body.Bytes(), &e) != nil || e.Message == "" {
				t.Fatalf("400 without JSON error body for %q: %s", body, rec.body.String())
			}
		}
	})
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(c int) { r.code = c }

// TestInitClosesPreSnapshotUpload: a large upload is served on a hijacked
// connection (spliced into the file). One in flight across a snapshot is
// a pre-snapshot socket like any other: /init closes it, and the upload
// leaves neither the target nor a temp file behind.
func TestInitClosesPreSnapshotUpload(t *testing.T) {
	h := start(t, nil)
	dir := t.TempDir()
	target := filepath.Join(dir, "big.bin")
	up := rawConn(t, h.addr, false)
	size := 64 << 20
	fmt.Fprintf(up, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", target, size)
	if _, err := up.Write(make([]byte, 2<<20)); err != nil {
		t.Fatal(err)
	}
	// The upload is under way: its temp file exists.
	testutil.Eventually(t, testutil.Short, func() bool {
		ents, _ := os.ReadDir(dir)
		return len(ents) == 1
	}, "upload temp file")
	if code, _ := h.do(t, "POST", "/snapshot/prepare", "", nil); code != http.StatusOK {
		t.Fatal("prepare failed")
	}
	if code, b := h.do(t, "POST", "/init", `{"capsule_id":"cl-x"}`, map[string]string{"Content-Type": "application/json"}); code != http.StatusNoContent {
		t.Fatalf("init: %d %s", code, b)
	}
	if !closedByPeer(up) {
		t.Fatal("/init did not close the connection of an upload in flight")
	}
	testutil.Eventually(t, testutil.Short, func() bool {
		ents, _ := os.ReadDir(dir)
		return len(ents) == 0
	}, "no target and no temp file left")
	testutil.Eventually(t, testutil.Short, func() bool { return h.srv.conns.count() == 0 }, "closed hijacked connection forgotten")
}
