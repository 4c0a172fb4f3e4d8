package apitest_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// recTB records Errorf calls instead of failing the test.
type recTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recTB) Helper() {}

func (r *recTB) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

const goodCapsule = `{"id":"cl-abc","status":"running","template_id":"tpl-base","vcpus":1,"memory_mb":512,` +
	`"disk_size_mb":5120,"timeout_sec":300,"expires_at":null,"public":false,"allow_internet":true,` +
	`"created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z"}`

// TestValidatorCatchesMismatches proves the harness every API test server
// goes through fails a test when an answer drifts from openapi.yaml, both
// as a server-side handler wrapper and as a client-side RoundTripper.
func TestValidatorCatchesMismatches(t *testing.T) {
	cases := []struct {
		name, method, path, ctype, body string
		status                          int
		want                            string // substring of the failure; "" for none
	}{
		{"valid capsule", "GET", "/v1/capsules/cl-abc", "application/json", goodCapsule, 200, ""},
		{
			"capsule without a required field", "GET", "/v1/capsules/cl-abc", "application/json",
			strings.Replace(goodCapsule, `"status":"running",`, "", 1), 200, `property "status" is missing`,
		},
		{
			"capsule field of the wrong type", "GET", "/v1/capsules/cl-abc", "application/json",
			strings.Replace(goodCapsule, `"vcpus":1`, `"vcpus":"1"`, 1), 200, "vcpus",
		},
		{
			"capsule with a status outside the enum", "GET", "/v1/capsules/cl-abc", "application/json",
			strings.Replace(goodCapsule, `"running"`, `"sleeping"`, 1), 200, "status",
		},
		{
			"undeclared property", "GET", "/v1/capsules/cl-abc", "application/json",
			strings.Replace(goodCapsule, `{`, `{"secret":"x",`, 1), 200, "$.secret",
		},
		{"undocumented status", "GET", "/v1/capsules/cl-abc", "application/json", goodCapsule, 202, "status is not supported"},
		{"undocumented route", "GET", "/v1/nowhere", "application/json", `{}`, 200, "route not in the document"},
		{"error body without a code", "GET", "/v1/capsules/cl-abc", "application/json", `{"message":"x"}`, 404, `property "code" is missing`},
		{"error that is not JSON", "GET", "/v1/capsules/cl-abc", "text/plain", "not found", 404, "must be JSON"},
		{"valid error", "GET", "/v1/capsules/cl-abc", "application/json", `{"code":"not_found","message":"no"}`, 404, ""},
		{
			"list item without a required field", "GET", "/v1/capsules", "application/json",
			`{"capsules":[{"id":"cl-abc"}],"next_cursor":""}`, 200, "is missing",
		},
		{"file download (not JSON) is skipped", "GET", "/v1/capsules/cl-abc/files?path=/x", "application/octet-stream", "\x00\x01", 200, ""},
		{"download with an undocumented content type", "GET", "/v1/capsules/cl-abc/files?path=/x", "text/html", "<p>", 200, "not documented"},
		{"metrics text is skipped", "GET", "/metrics", "text/plain; version=0.0.4", "# HELP x\n", 200, ""},
		{
			"trailing slash of a chi sub-route", "PATCH", "/v1/teams/team-1/", "application/json",
			`{"id":"team-1","name":"n","is_byoc":false,"created_at":"2026-01-02T03:04:05Z"}`, 200, "",
		},
		{"a 204 body is dropped by net/http", "DELETE", "/v1/capsules/cl-abc", "application/json", `{}`, 204, ""},
		{"port proxy is skipped", "GET", "/proxy/cl-abc/8080/x", "text/html", "<p>", 500, ""},
	}
	v := apitest.NewValidator(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", c.ctype)
				w.WriteHeader(c.status)
				_, _ = io.WriteString(w, c.body)
			})
			check := func(via string, failures []string) {
				t.Helper()
				switch {
				case c.want == "" && len(failures) > 0:
					t.Errorf("%s: unexpected failure: %v", via, failures)
				case c.want != "" && len(failures) == 0:
					t.Errorf("%s: mismatch not reported (want %q)", via, c.want)
				case c.want != "" && !strings.Contains(strings.Join(failures, "\n"), c.want):
					t.Errorf("%s: failure %v does not mention %q", via, failures, c.want)
				}
			}
			// Server side: the handler wrapper.
			rec := &recTB{TB: t}
			srv := httptest.NewServer(v.Handler(rec, h))
			defer srv.Close()
			do(t, http.DefaultClient, c.method, srv.URL+c.path)
			check("handler", rec.failures())
			// Client side: the RoundTripper.
			rec2 := &recTB{TB: t}
			plain := httptest.NewServer(h)
			defer plain.Close()
			do(t, &http.Client{Transport: v.RoundTripper(rec2, nil)}, c.method, plain.URL+c.path)
			check("round tripper", rec2.failures())
		})
	}
}

func do(t *testing.T, cl *http.Client, method, url string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	_ = res.Body.Close()
}

// TestValidatorSkipsWebSockets: a handshake is passed through unchecked
// (the wrapper must not break hijacking either).
func TestValidatorSkipsWebSockets(t *testing.T) {
	rec := &recTB{TB: t}
	h := apitest.NewValidator(t).Handler(rec, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack through the validator: %v", err)
			return
		}
		_, _ = buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = buf.Flush()
		_ = conn.Close()
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/v1/capsules/cl-abc/pty", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", res.StatusCode)
	}
	if f := rec.failures(); len(f) > 0 {
		t.Fatalf("handshake was validated: %v", f)
	}
}
