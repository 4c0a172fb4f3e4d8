package api

// File transfers (GET and PUT /v1/capsules/{id}/files) move their bytes
// with one plain HTTP request to the capsule's host agent, on its envd
// route (/envd/{capsule}/files, internal/hostagent/envdroute.go), which
// reverse-proxies envd's own /files endpoint with the capsule's envd
// token. No protobuf framing, one user-space copy per hop with 1 MiB
// buffers, Content-Length kept end to end (envd serves downloads with
// sendfile and splices sized uploads into the file).
//
// Invariants:
//   - The request to the agent is built here, never copied from the
//     client's: it carries only the path, the user, the body, its length
//     and the host credential (which the agent removes); no client header,
//     cookie or Wrenn credential reaches the agent or envd.
//   - The capsule is resolved (team scope, auto-resume, running) by
//     capsules.Connect before any byte moves.
//   - A non-200 answer (the agent's {"code","message"} or envd's
//     {"message","code"}) maps to the same codes the agent's Connect file
//     RPCs gave (envdStatusCode), so errors did not change with the path.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/relay"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

// fileCopyBuf is the size of the buffers file bytes are copied through.
const fileCopyBuf = 1 << 20

var fileBufPool = sync.Pool{New: func() any { b := make([]byte, fileCopyBuf); return &b }}

// envdRouteBase is the URL of capsule c's envd route on its agent.
func (a *API) envdRouteBase(conn capsules.Conn) (string, error) {
	if a.cfg.Agents == nil {
		return "", errors.New("api: no agent pool configured")
	}
	return a.cfg.Agents.BaseURL(conn.Host.Address) + hostagent.EnvdRoutePrefix + url.PathEscape(conn.Capsule.ID), nil
}

// envdFilesRequest builds a request to envd's /files endpoint of conn's
// capsule through its agent (base: envdRouteBase).
func (a *API) envdFilesRequest(ctx context.Context, conn capsules.Conn, base, method, filePath, user string) (*http.Request, error) {
	q := url.Values{"path": {filePath}}
	if user != "" {
		q.Set("username", user)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+"/files?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(hostagent.SecretHeader, a.cfg.Agents.Credential(conn.Host.ID))
	return req, nil
}

// envdFiles sends one request to envd's /files endpoint of conn's capsule
// through its agent, on the pool's file transport. body (nil for a
// download) is sent with length size (-1: unknown, sent chunked).
func (a *API) envdFiles(ctx context.Context, conn capsules.Conn, method, filePath, user string, body io.Reader, size int64) (*http.Response, error) {
	base, err := a.envdRouteBase(conn)
	if err != nil {
		return nil, err
	}
	req, err := a.envdFilesRequest(ctx, conn, base, method, filePath, user)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
		req.ContentLength = size
		req.Body = io.NopCloser(body)
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	return a.cfg.Agents.FileTransport().RoundTrip(req)
}

// agentResponseTimeout bounds the wait for the agent's answer headers on
// a raw download connection (as the pool's ResponseHeaderTimeout does).
const agentResponseTimeout = 5 * time.Minute

// readFileRaw serves a download from a plain-HTTP agent on a connection
// of its own (relay.RoundTripRaw), so that the body goes from the agent's
// socket to the client's with splice(2) when the client's connection is
// plain TCP too: no copy through user space here.
func (a *API) readFileRaw(w http.ResponseWriter, r *http.Request, conn capsules.Conn, base, filePath, user string) {
	ctx := r.Context()
	req, err := a.envdFilesRequest(ctx, conn, base, http.MethodGet, filePath, user)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := relay.RoundTripRaw(req, req.URL.Host, 5*time.Second, agentResponseTimeout)
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	defer func() { _ = resp.Close() }()
	if resp.StatusCode != http.StatusOK {
		a.writeError(w, r, envdFilesError("download", resp.Response))
		return
	}
	size := int64(-1)
	if resp.Sized() {
		size = resp.ContentLength
	}
	startDownload(w, filePath, size)
	bp := fileBufPool.Get().(*[]byte)
	defer fileBufPool.Put(bp)
	missing, err := resp.CopyBody(w, r.TLS == nil, *bp)
	if missing > 0 || err != nil {
		if ctx.Err() == nil {
			a.log.WarnContext(ctx, "file stream broke", "capsule_id", conn.Capsule.ID, "request_id", requestID(ctx),
				"missing_bytes", missing, "err", err)
		}
		// Abort the response: the client sees a truncated body, not a
		// silently short file (or it is gone already).
		panic(http.ErrAbortHandler)
	}
}

// startDownload writes a download's headers (size -1: unknown).
func startDownload(w http.ResponseWriter, filePath string, size int64) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", attachment(filePath))
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
}

// finishDownload copies body to w after startDownload; a failed read
// aborts the response (the client sees a truncated body, not a silently
// short file), a failed write is the client gone.
func (a *API) finishDownload(w http.ResponseWriter, r *http.Request, conn capsules.Conn, body io.Reader) {
	src := &errRecorder{r: body}
	if _, err := copyFile(w, src); err != nil && src.err != nil && r.Context().Err() == nil {
		a.log.WarnContext(r.Context(), "file stream broke", "capsule_id", conn.Capsule.ID, "request_id", requestID(r.Context()), "err", src.err)
		panic(http.ErrAbortHandler)
	}
}

// envdStatusCode is the Connect code of an envd (or envd route) HTTP
// status, as the agent maps it for its own file RPCs.
func envdStatusCode(status int) connect.Code {
	switch status {
	case http.StatusNotFound:
		return connect.CodeNotFound
	case http.StatusBadRequest:
		return connect.CodeInvalidArgument
	case http.StatusUnauthorized, http.StatusForbidden:
		return connect.CodePermissionDenied
	case http.StatusInsufficientStorage, http.StatusRequestEntityTooLarge:
		return connect.CodeResourceExhausted
	case http.StatusConflict:
		return connect.CodeAlreadyExists
	}
	return connect.CodeUnknown
}

// envdFilesError maps a non-200 answer of the envd route to an API error.
// op names the operation in the message ("download", "upload").
func envdFilesError(op string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	msg := strings.TrimSpace(string(b))
	// The agent's {"code":"…","message"} or envd's {"message","code":N}
	// (field names match case-insensitively).
	var body struct {
		Code    any
		Message string
	}
	if json.Unmarshal(b, &body) == nil && body.Message != "" {
		msg = body.Message
	}
	err := fmt.Errorf("envd %s: status %d: %s", op, resp.StatusCode, msg)
	if c, _ := body.Code.(string); c == "unauthenticated" {
		// The agent refused the control plane's credential: not the
		// caller's fault.
		return &capsules.Error{Kind: capsules.KindUnavailable, Message: capsules.MsgAgentUnavailable, Err: err}
	}
	return capsules.AgentError(connect.NewError(envdStatusCode(resp.StatusCode), err))
}

// errRecorder remembers the first error its reader returned other than
// io.EOF, to tell a failed read (abort) from a failed write (client gone).
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && e.err == nil {
		e.err = err
	}
	return n, err
}

// writerOnly hides a ResponseWriter's ReadFrom: net/http's ReadFrom copies
// a non-socket source through 32 KiB buffers, io.CopyBuffer with ours
// through 1 MiB.
type writerOnly struct{ io.Writer }

// copyFile copies src to dst through a pooled 1 MiB buffer.
func copyFile(dst io.Writer, src io.Reader) (int64, error) {
	bp := fileBufPool.Get().(*[]byte)
	defer fileBufPool.Put(bp)
	return io.CopyBuffer(writerOnly{dst}, src, *bp)
}

// uploadedEntry is the metadata of a file an upload wrote: envd's upload
// answer names it only, so it is stat'ed (as the writing user, through
// the same envd route) for its size, mode and owner; the name-only entry
// stands if the stat fails, as the agent's WriteFileStream did.
func (a *API) uploadedEntry(ctx context.Context, conn capsules.Conn, user, filePath string, answer io.Reader) wrennapi.FileEntry {
	var es []envdclient.EntryInfo
	out := wrennapi.FileEntry{Path: filePath, Type: "file"}
	if json.NewDecoder(io.LimitReader(answer, 1<<20)).Decode(&es) == nil && len(es) > 0 {
		out = wrennapi.FileEntry{Name: es[0].Name, Path: es[0].Path, Type: es[0].Type}
	}
	base, err := a.envdRouteBase(conn)
	if err != nil {
		return out
	}
	secret := a.cfg.Agents.Credential(conn.Host.ID)
	headers := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set(hostagent.SecretHeader, secret)
			if user != "" {
				req.Header().Set("Authorization", envdclient.BasicUser(user))
			}
			return next(ctx, req)
		}
	})
	fs := filesystemconnect.NewFilesystemClient(&http.Client{Transport: a.cfg.Agents.Transport()}, base,
		connect.WithInterceptors(headers), connect.WithAcceptCompression("gzip", nil, nil))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: out.Path}))
	if err != nil || st.Msg.GetEntry() == nil {
		a.log.DebugContext(ctx, "stat after upload failed", "capsule_id", conn.Capsule.ID, "err", err)
		return out
	}
	return envdEntryJSON(st.Msg.GetEntry())
}

// envdEntryJSON converts envd's entry as the agent's file routes do.
func envdEntryJSON(e *fspb.EntryInfo) wrennapi.FileEntry { return toEntryJSON(hostagent.FileEntry(e)) }

// localRequest builds the request the in-process agent's handler serves
// (`wrenn up`): the same request envdFiles sends, with the server-side
// fields a handler reads and the client connection's TLS state (the
// agent splices only to a plain-TCP connection).
func (a *API) localRequest(r *http.Request, conn capsules.Conn, method, filePath, user string) (*http.Request, error) {
	base, err := a.envdRouteBase(conn)
	if err != nil {
		return nil, err
	}
	req, err := a.envdFilesRequest(r.Context(), conn, base, method, filePath, user)
	if err != nil {
		return nil, err
	}
	req.RequestURI = req.URL.RequestURI()
	req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.1", 1, 1
	req.RemoteAddr, req.TLS = r.RemoteAddr, r.TLS
	req.Body = http.NoBody
	return req, nil
}

// localAnswer receives the in-process agent's answer. With pass set (a
// download) a 200 goes straight to the client (its Content-Length, our
// headers; ReadFrom kept for splice); anything else is kept (up to 1 MiB)
// for the caller to map. It has no Hijack: the agent then forwards an
// upload with its reverse proxy and answers here.
type localAnswer struct {
	w        http.ResponseWriter
	filePath string
	pass     bool

	header  http.Header
	status  int
	passing bool
	body    bytes.Buffer
}

func (l *localAnswer) Header() http.Header { return l.header }

func (l *localAnswer) WriteHeader(status int) {
	if l.status != 0 {
		return
	}
	l.status = status
	if l.pass && status == http.StatusOK {
		size := int64(-1)
		if n, err := strconv.ParseInt(l.header.Get("Content-Length"), 10, 64); err == nil {
			size = n
		}
		startDownload(l.w, l.filePath, size)
		l.passing = true
	}
}

func (l *localAnswer) Write(b []byte) (int, error) {
	if l.status == 0 {
		l.WriteHeader(http.StatusOK)
	}
	if l.passing {
		return l.w.Write(b)
	}
	if room := 1<<20 - l.body.Len(); room > 0 {
		l.body.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

func (l *localAnswer) ReadFrom(src io.Reader) (int64, error) {
	if l.status == 0 {
		l.WriteHeader(http.StatusOK)
	}
	if rf, ok := l.w.(io.ReaderFrom); ok && l.passing {
		return rf.ReadFrom(src)
	}
	return copyFile(writerOnly{l}, src)
}

func (l *localAnswer) Flush() {
	if l.passing {
		_ = http.NewResponseController(l.w).Flush()
	}
}

// Unwrap lets the agent's http.ResponseController reach the server's
// writer (full-duplex mode).
func (l *localAnswer) Unwrap() http.ResponseWriter { return l.w }

// response is the kept answer, for envdFilesError and uploadedEntry.
func (l *localAnswer) response() *http.Response {
	status := l.status
	if status == 0 {
		status = http.StatusOK
	}
	return &http.Response{StatusCode: status, Header: l.header, Body: io.NopCloser(bytes.NewReader(l.body.Bytes()))}
}

// readFileLocal serves a download through the in-process agent's handler:
// envd's socket to the client's, one splice and no loopback hop.
func (a *API) readFileLocal(w http.ResponseWriter, r *http.Request, conn capsules.Conn, agent http.Handler, filePath, user string) {
	req, err := a.localRequest(r, conn, http.MethodGet, filePath, user)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ans := &localAnswer{w: w, filePath: filePath, pass: true, header: http.Header{}}
	agent.ServeHTTP(ans, req)
	if !ans.passing {
		a.writeError(w, r, envdFilesError("download", ans.response()))
	}
}

// writeFileLocal sends an upload through the in-process agent's handler
// (its reverse proxy to envd: one copy, no loopback hop) and returns its
// answer.
func (a *API) writeFileLocal(r *http.Request, conn capsules.Conn, agent http.Handler, filePath, user string, body io.Reader) (*http.Response, error) {
	req, err := a.localRequest(r, conn, http.MethodPost, filePath, user)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.ContentLength = r.ContentLength
	if r.ContentLength != 0 {
		req.Body = io.NopCloser(body)
	}
	if r.ContentLength < 0 {
		req.TransferEncoding = []string{"chunked"}
	}
	ans := &localAnswer{header: http.Header{}}
	agent.ServeHTTP(ans, req)
	return ans.response(), nil
}

// localAgent is the in-process handler of conn's agent (`wrenn up`), or nil.
func (a *API) localAgent(conn capsules.Conn) http.Handler {
	if a.cfg.Agents == nil {
		return nil
	}
	return a.cfg.Agents.Local(conn.Host.Address)
}
