package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

// envdStandIn plays a host agent's envd route in front of envd's /files
// and Filesystem.Stat (the real ones are covered end to end in sdk/ and
// internal/cli, which need root): it records what the control plane sends
// it, so the test can check that nothing but the path, the user, the body
// and the host credential arrives.
type envdStandIn struct {
	capsuleID string
	secret    string

	mu    sync.Mutex
	files map[string][]byte
	seen  []seenRequest
}

type seenRequest struct {
	method, path, query string
	header              http.Header
	contentLength       int64
	chunked             bool
}

func (s *envdStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, seenRequest{
		method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header.Clone(),
		contentLength: r.ContentLength, chunked: len(r.TransferEncoding) > 0,
	})
	s.mu.Unlock()
	prefix := hostagent.EnvdRoutePrefix + s.capsuleID
	rest, ok := strings.CutPrefix(r.URL.Path, prefix)
	if !ok {
		http.Error(w, `{"code":"not_found","message":"no such running capsule"}`, http.StatusNotFound)
		return
	}
	if r.Header.Get(hostagent.SecretHeader) != s.secret {
		http.Error(w, `{"code":"unauthenticated","message":"missing or invalid host secret"}`, http.StatusUnauthorized)
		return
	}
	if rest != "/files" {
		r2 := r.Clone(r.Context())
		r2.URL.Path = rest
		_, h := filesystemconnect.NewFilesystemHandler(statOnly{s: s})
		h.ServeHTTP(w, r2)
		return
	}
	p := r.URL.Query().Get("path")
	envdError := func(status int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"message": msg, "code": status})
	}
	switch {
	case p == "/unauth":
		http.Error(w, `{"code":"unauthenticated","message":"missing or invalid host secret"}`, http.StatusUnauthorized)
	case p == "/dir":
		envdError(http.StatusBadRequest, `path "/dir" is a directory`)
	case p == "/nouser":
		envdError(http.StatusUnauthorized, `invalid user: user "nobody2" does not exist`)
	case p == "/cut" && r.Method == http.MethodGet:
		// Promise 1 MiB, send 1000 bytes, break the connection.
		w.Header().Set("Content-Length", strconv.Itoa(1<<20))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(make([]byte, 1000))
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	case r.Method == http.MethodGet:
		s.mu.Lock()
		b, ok := s.files[p]
		s.mu.Unlock()
		if !ok {
			envdError(http.StatusNotFound, "path "+strconv.Quote(p)+" does not exist")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	case r.Method == http.MethodPost:
		b, err := io.ReadAll(r.Body)
		if err != nil {
			envdError(http.StatusBadRequest, "reading upload body: "+err.Error())
			return
		}
		s.mu.Lock()
		s.files[p] = b
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode([]map[string]string{{"path": p, "name": path.Base(p), "type": "file"}})
	default:
		envdError(http.StatusMethodNotAllowed, "no")
	}
}

func (s *envdStandIn) last() seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[len(s.seen)-1]
}

func (s *envdStandIn) all() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenRequest(nil), s.seen...)
}

type statOnly struct {
	filesystemconnect.UnimplementedFilesystemHandler
	s *envdStandIn
}

func (h statOnly) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	p := req.Msg.GetPath()
	h.s.mu.Lock()
	b, ok := h.s.files[p]
	h.s.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such file"))
	}
	owner := "user"
	if a := req.Header().Get("Authorization"); a != "" {
		owner = "basic:" + a
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: &fspb.EntryInfo{
		Name: path.Base(p), Path: p, Type: fspb.FileType_FILE_TYPE_FILE, Size: int64(len(b)), Mode: 0o644,
		Permissions: "-rw-r--r--", Owner: owner, Group: "user",
	}}), nil
}

// fileModes are the ways the API reaches an agent: plain HTTP (downloads
// take a raw connection of their own, spliced), HTTPS (the pool's file
// transport) and in process (`wrenn up`: the agent's handler is called).
var fileModes = []string{"http", "https", "local"}

// newFilesEnv serves the API with a stand-in agent reached in mode.
func newFilesEnv(t *testing.T, maxFile int64, mode string) (*env, *envdStandIn, string, string) {
	t.Helper()
	withTLS := mode == "https"
	standIn := &envdStandIn{files: map[string][]byte{}}
	agent := httptest.NewUnstartedServer(standIn)
	if withTLS {
		agent.StartTLS()
	} else {
		agent.Start()
	}
	t.Cleanup(agent.Close)
	e := newEnv(t, apitest.SQLite(t), func(c *api.Config, _ string) {
		c.MaxFileBytes = maxFile
		if withTLS {
			roots := x509.NewCertPool()
			roots.AddCert(agent.Certificate())
			c.Agents = agents.New(agents.Config{Key: auth.DeriveKey(testKey, "host"), TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
			t.Cleanup(c.Agents.Close)
		}
	})
	admin := e.signup("root@example.com")
	e.makeAdmin(admin)
	hostID, _ := e.registerHost(admin, strings.TrimPrefix(agent.URL, "http://"), "")
	u := e.signup("alice@example.com")
	key := e.apiKey(u, "k")
	c := e.insertCapsule(u.team, hostID)
	standIn.capsuleID = c.ID
	standIn.secret = e.agents.Credential(hostID)
	if mode == "local" {
		e.agents.SetLocal(strings.TrimPrefix(agent.URL, "http://"), standIn)
	}
	return e, standIn, key, "/v1/capsules/" + c.ID + "/files"
}

// TestFilesThroughEnvdRoute: uploads and downloads go to the agent's envd
// route with the body's length, the path and the user, and nothing of the
// client's credentials or headers.
func TestFilesThroughEnvdRoute(t *testing.T) {
	for _, mode := range fileModes {
		t.Run(mode, func(t *testing.T) { testFilesThroughEnvdRoute(t, mode) })
	}
}

func testFilesThroughEnvdRoute(t *testing.T, mode string) {
	e, standIn, key, files := newFilesEnv(t, 64<<20, mode)
	data := make([]byte, 3<<20+17)
	_, _ = rand.Read(data)
	hostile := []string{
		"Cookie", "wrenn_session=secret-cookie", "X-Wrenn-Host-Secret", "forged", "X-Access-Token", "wrc_forged",
		"Authorization", "Basic cm9vdDo=", "X-Forwarded-For", "6.6.6.6", "Range", "bytes=0-9",
	}
	r := e.want(e.do("PUT", files+"?path=/tmp/a/blob", key, data, hostile...), 200)
	var entry map[string]any
	if err := json.Unmarshal(r.body, &entry); err != nil {
		t.Fatal(err)
	}
	if entry["size"] != float64(len(data)) || entry["type"] != "file" || entry["owner"] != "user" || entry["permissions"] != "-rw-r--r--" {
		t.Errorf("upload answer = %v; want the stat'ed entry of %d bytes", entry, len(data))
	}
	if !bytes.Equal(standIn.files["/tmp/a/blob"], data) {
		t.Fatal("the stand-in did not receive the bytes sent")
	}
	up := standIn.all()[0]
	if up.method != "POST" || up.contentLength != int64(len(data)) || up.chunked {
		t.Errorf("upload reached the agent as %s with length %d (chunked %v); want POST with Content-Length %d", up.method, up.contentLength, up.chunked, len(data))
	}
	r = e.want(e.do("GET", files+"?path=/tmp/a/blob", key, nil, hostile...), 200)
	if !bytes.Equal(r.body, data) {
		t.Fatalf("download: %d bytes, not the %d uploaded", len(r.body), len(data))
	}
	if got := r.header.Get("Content-Length"); got != strconv.Itoa(len(data)) {
		t.Errorf("download Content-Length = %q; want %d", got, len(data))
	}
	if got := r.header.Get("Content-Disposition"); !strings.Contains(got, `filename=blob`) {
		t.Errorf("Content-Disposition = %q", got)
	}
	for _, s := range standIn.all() {
		for name, vals := range s.header {
			switch http.CanonicalHeaderKey(name) {
			case "Content-Length", "Content-Type", "Accept-Encoding", "User-Agent", "Connect-Protocol-Version",
				"Connect-Timeout-Ms", "Connection":
				continue
			case hostagent.SecretHeader:
				if vals[0] == standIn.secret {
					continue
				}
			}
			t.Errorf("%s %s reached the agent with header %s: %q", s.method, s.path, name, vals)
		}
		if strings.Contains(s.query, "wrn_") || strings.Contains(s.query, "secret") {
			t.Errorf("query %q carries a credential", s.query)
		}
	}
	// The user reaches envd as its username parameter, and the stat after
	// the upload is made as that user.
	e.want(e.do("PUT", files+"?path=/tmp/b&user=root", key, "x"), 200)
	seen := standIn.all()
	if q := seen[len(seen)-2].query; !strings.Contains(q, "username=root") {
		t.Errorf("upload as root: query %q", q)
	}
	if a := standIn.last().header.Get("Authorization"); a != "Basic cm9vdDo=" {
		t.Errorf("stat after upload as root: Authorization %q; want Basic root:", a)
	}
	// An empty upload is a file of 0 bytes.
	r = e.want(e.do("PUT", files+"?path=/tmp/empty", key, ""), 200)
	if s := standIn.all()[len(standIn.all())-2]; s.contentLength != 0 || s.chunked {
		t.Errorf("empty upload: length %d chunked %v", s.contentLength, s.chunked)
	}
}

// TestFilesErrorsThroughEnvdRoute: envd's and the agent's error answers
// map to the API's codes as the agent's file RPCs did.
func TestFilesErrorsThroughEnvdRoute(t *testing.T) {
	for _, mode := range fileModes {
		t.Run(mode, func(t *testing.T) { testFilesErrorsThroughEnvdRoute(t, mode) })
	}
}

func testFilesErrorsThroughEnvdRoute(t *testing.T, mode string) {
	e, standIn, key, files := newFilesEnv(t, 1<<20, mode)
	for _, tc := range []struct {
		name, method, query string
		body                any
		status              int
		code, msg           string
	}{
		{"missing", "GET", "?path=/nope", nil, 404, "not_found", "does not exist"},
		{"directory", "GET", "?path=/dir", nil, 400, "invalid_argument", "is a directory"},
		{"write to a directory", "PUT", "?path=/dir", "x", 400, "invalid_argument", "is a directory"},
		{"unknown user", "GET", "?path=/nouser&user=nobody2", nil, 403, "permission_denied", "does not exist"},
		{"agent refuses the control plane", "GET", "?path=/unauth", nil, 503, "unavailable", ""},
		{"no path", "GET", "", nil, 400, "invalid_argument", "path is required"},
		{"too large (Content-Length)", "PUT", "?path=/big", make([]byte, 1<<20+1), 413, "payload_too_large", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.want(e.do(tc.method, files+tc.query, key, tc.body), tc.status)
			if got := r.str(t, "code"); got != tc.code {
				t.Errorf("code = %q; want %q (%s)", got, tc.code, r.body)
			}
			if !strings.Contains(r.str(t, "message"), tc.msg) {
				t.Errorf("message = %q; want it to contain %q", r.str(t, "message"), tc.msg)
			}
		})
	}
	if _, ok := standIn.files["/big"]; ok {
		t.Error("an upload over the limit reached envd")
	}

	t.Run("too large (chunked)", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write(make([]byte, 1<<20+1))
			_ = pw.Close()
		}()
		req, _ := http.NewRequestWithContext(t.Context(), "PUT", e.srv.URL+files+"?path=/big2", pr)
		req.Header.Set("X-API-Key", key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 413 || !strings.Contains(string(b), "payload_too_large") {
			t.Errorf("status %d: %s; want 413 payload_too_large", res.StatusCode, b)
		}
	})

	t.Run("download cut short is an error, not a short file", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", e.srv.URL+files+"?path=/cut", nil)
		req.Header.Set("X-API-Key", key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return // cut before the headers went out: an error too
		}
		defer res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("status %d; want 200 and a broken body", res.StatusCode)
		}
		n, err := io.Copy(io.Discard, res.Body)
		if err == nil {
			t.Errorf("read %d bytes and no error; want the body aborted", n)
		}
	})
}

// TestFilesAgentUnreachable: a host that does not answer is 503
// unavailable, not a 500.
func TestFilesAgentUnreachable(t *testing.T) {
	e := newEnv(t, apitest.SQLite(t))
	admin := e.signup("root@example.com")
	e.makeAdmin(admin)
	hostID, _ := e.registerHost(admin, "127.0.0.1:1", "")
	u := e.signup("alice@example.com")
	key := e.apiKey(u, "k")
	c := e.insertCapsule(u.team, hostID)
	for _, m := range []string{"GET", "PUT"} {
		r := e.want(e.do(m, "/v1/capsules/"+c.ID+"/files?path=/x", key, map[bool]any{true: "data", false: nil}[m == "PUT"]), 503)
		if got := r.str(t, "code"); got != "unavailable" {
			t.Errorf("%s: code %q; want unavailable", m, got)
		}
	}
}
