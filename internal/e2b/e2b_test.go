package e2b

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/capsules"
)

// sign computes a signature the way E2B's SDK does.
func sign(path, op, user, token string, exp int64) string {
	raw := path + ":" + op + ":" + user + ":" + token
	if exp != 0 {
		raw += ":" + strconv.FormatInt(exp, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

func TestEnvdAuthorized(t *testing.T) {
	h := New(Config{Key: []byte("k")})
	id, other := "cl-a", "cl-b"
	tok := h.envdToken(id)
	if tok == h.envdToken(other) || tok == New(Config{Key: []byte("k2")}).envdToken(id) {
		t.Fatal("tokens must differ per capsule and per key")
	}
	req := func(method, rawQuery, token string) *http.Request {
		r := httptest.NewRequest(method, "/e2b/envd/files?"+rawQuery, nil)
		if token != "" {
			r.Header.Set(accessTokenHeader, token)
		}
		return r
	}
	q := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	future, past := time.Now().Add(time.Hour).Unix(), time.Now().Add(-time.Hour).Unix()
	for _, c := range []struct {
		name string
		r    *http.Request
		rest string
		want bool
	}{
		{"token", req("GET", "", tok), "/files", true},
		{"token on rpc", req("POST", "", tok), "/process.Process/Start", true},
		{"wrong token", req("GET", "", "nope"), "/files", false},
		{"other sandbox's token", req("GET", "", h.envdToken(other)), "/files", false},
		{"nothing", req("GET", "", ""), "/files", false},
		{"signed read", req("GET", q("path", "/a", "username", "root", "signature", sign("/a", "read", "root", tok, 0)), ""), "/files", true},
		{"signed write", req("POST", q("path", "/a", "signature", sign("/a", "write", "", tok, 0)), ""), "/files", true},
		{"read signature used to write", req("POST", q("path", "/a", "signature", sign("/a", "read", "", tok, 0)), ""), "/files", false},
		{"other path", req("GET", q("path", "/b", "signature", sign("/a", "read", "", tok, 0)), ""), "/files", false},
		{"signature off /files", req("GET", q("path", "/a", "signature", sign("/a", "read", "", tok, 0)), ""), "/health", false},
		{"unexpired", req("GET", q("path", "/a", "signature", sign("/a", "read", "", tok, future), "signature_expiration", strconv.FormatInt(future, 10)), ""), "/files", true},
		{"expired", req("GET", q("path", "/a", "signature", sign("/a", "read", "", tok, past), "signature_expiration", strconv.FormatInt(past, 10)), ""), "/files", false},
		{"expiry stripped", req("GET", q("path", "/a", "signature", sign("/a", "read", "", tok, future)), ""), "/files", false},
	} {
		if got := h.envdAuthorized(c.r, id, c.rest); got != c.want {
			t.Errorf("%s: authorized = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestErrorsAreE2BShaped: unauthenticated calls, unknown routes, 501
// routes and the envd route's refusals answer {"code": status, "message"}.
func TestErrorsAreE2BShaped(t *testing.T) {
	h := New(Config{Key: []byte("k"), Auth: func(r *http.Request) (capsules.Scope, error) {
		if r.Header.Get("X-API-Key") == "" {
			return capsules.Scope{}, errUnauth
		}
		return capsules.TeamScope("team-x", "", capsules.SystemScope().Actor), nil
	}})
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"GET", "/e2b/v2/sandboxes", nil, 401},
		{"GET", "/e2b/nope", map[string]string{"X-API-Key": "k"}, 404},
		{"POST", "/e2b/v3/templates", map[string]string{"X-API-Key": "k"}, 501},
		{"GET", "/e2b/secrets", map[string]string{"X-API-Key": "k"}, 501},
		{"PUT", "/e2b/sandboxes/cl-a/network", map[string]string{"X-API-Key": "k"}, 501},
		{"POST", "/e2b/envd/process.Process/Start", nil, 400},
		{"POST", "/e2b/envd/process.Process/Start", map[string]string{sandboxIDHeader: "cl-a"}, 401},
		{"POST", "/e2b/envd/process.Process/Start", map[string]string{sandboxIDHeader: "cl-a", accessTokenHeader: "x"}, 401},
		{"GET", "/e2b/envd/health", map[string]string{sandboxIDHeader: "cl-a", sandboxPortHeader: "8080", accessTokenHeader: h.envdToken("cl-a")}, 400},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		for k, v := range c.hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var body apiError
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != c.want || body.Code != c.want || body.Message == "" {
			t.Errorf("%s %s: %d %s, want %d with an E2B error body", c.method, c.path, w.Code, w.Body, c.want)
		}
	}
}

// TestOversizedUploadIs413: a body over MaxFileBytes on the envd route is
// refused before anything reaches the capsule.
func TestOversizedUploadIs413(t *testing.T) {
	h := New(Config{Key: []byte("k"), MaxFileBytes: 10})
	r := httptest.NewRequest("POST", "/e2b/envd/files?path=/x", strings.NewReader(strings.Repeat("x", 100)))
	r.Header.Set(sandboxIDHeader, "cl-a")
	r.Header.Set(accessTokenHeader, h.envdToken("cl-a"))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body apiError
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != 413 || body.Code != 413 {
		t.Fatalf("oversized upload: %d %s", w.Code, w.Body)
	}
}

var errUnauth = &httpError{http.StatusUnauthorized, "missing credentials"}

func TestListFilter(t *testing.T) {
	f, states, err := listFilter(url.Values{"metadata": {"a=1&b=x%20y"}, "state": {"running"}, "limit": {"5"}, "nextToken": {"c"}})
	if err != nil || f.Metadata["a"] != "1" || f.Metadata["b"] != "x y" || !states["running"] || states["paused"] || f.Limit != 5 || f.Cursor != "c" {
		t.Fatalf("filter = %+v %v %v", f, states, err)
	}
	if _, s, _ := listFilter(url.Values{"state": {"running,paused"}}); !s["running"] || !s["paused"] {
		t.Fatalf("comma states = %v", s)
	}
	for _, bad := range []url.Values{{"state": {"killed"}}, {"limit": {"0"}}, {"metadata": {"%zz"}}} {
		if _, _, err := listFilter(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// TestResumeWithoutMemoryIs501: a resume asking for a cold boot (memory
// false, the SDK's onResume: 'reboot') is refused with 501, never turned
// into a memory restore. (Connect does the same for a paused sandbox:
// test/e2bcompat.)
func TestResumeWithoutMemoryIs501(t *testing.T) {
	h := New(Config{Key: []byte("k"), Auth: func(*http.Request) (capsules.Scope, error) {
		return capsules.TeamScope("team-x", "", capsules.SystemScope().Actor), nil
	}})
	r := httptest.NewRequest("POST", "/e2b/sandboxes/cl-a/resume", strings.NewReader(`{"memory":false,"timeout":60}`))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body apiError
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != 501 || body.Code != 501 {
		t.Errorf("resume with memory false: %d %s, want 501", w.Code, w.Body)
	}
}

// TestForkRefusesBadCounts: E2B's fork takes 1–100 copies; Wrenn makes at
// most capsules.MaxForkCount per request and says so; nothing is forked.
func TestForkRefusesBadCounts(t *testing.T) {
	h := New(Config{Key: []byte("k"), Auth: func(*http.Request) (capsules.Scope, error) {
		return capsules.TeamScope("team-x", "", capsules.SystemScope().Actor), nil
	}})
	for _, body := range []string{`{"count": 0}`, `{"count": 101}`, `{"count": 21}`, `{"timeout": -1}`, `{"count": "two"}`} {
		r := httptest.NewRequest("POST", "/e2b/sandboxes/cl-a/fork", strings.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var e apiError
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != 400 || e.Code != 400 || e.Message == "" {
			t.Errorf("fork %s: %d %s, want 400 with an E2B error body", body, w.Code, w.Body)
		}
	}
}
