// Package envdclient is the host agent's client for envd, the agent inside
// every capsule: typed helpers for envd's plain HTTP endpoints (/health,
// /version, /metrics, /init, /snapshot/prepare, streamed /files) and the
// process and filesystem Connect clients.
//
// Invariants:
//   - Two dedicated transports per client, never http.DefaultTransport: a
//     timeout client (whole-request timeout and a response-header timeout)
//     for short unary calls, and a streaming client with no overall timeout
//     for file transfers and process streams, which are bounded only by the
//     caller's context.
//   - Every request carries the capsule's access token (X-Access-Token) once
//     one is set; Connect calls also carry the acting user as a Basic
//     Authorization header when the context names one (WithUser).
//   - CloseIdleConnections drops every idle pooled connection; the agent
//     calls it before a pause so no half-open socket survives a snapshot.
package envdclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// AccessTokenHeader carries the capsule's access token.
const AccessTokenHeader = "X-Access-Token"

// DefaultUnaryTimeout bounds a whole unary request on the timeout client.
const DefaultUnaryTimeout = 2 * time.Minute

// Config configures a Client.
type Config struct {
	// Addr is envd's "host:port". Required.
	Addr string
	// AccessToken is sent as X-Access-Token (may be set later).
	AccessToken string
	// UnaryTimeout bounds unary requests (default DefaultUnaryTimeout).
	UnaryTimeout time.Duration
	// DialTimeout bounds one TCP connect (default 5 s).
	DialTimeout time.Duration
}

// Client talks to one envd.
type Client struct {
	base   string
	token  atomic.Pointer[string]
	unaryT *http.Transport
	strT   *http.Transport
	unary  *http.Client
	stream *http.Client
	opts   connect.ClientOption

	// Process is envd's process service (on the streaming client: its
	// calls are bounded by the caller's context).
	Process processconnect.ProcessClient
	// Filesystem is envd's filesystem service (on the timeout client,
	// except WatchDir which callers should avoid through it).
	Filesystem filesystemconnect.FilesystemClient
}

func newTransport(dialTimeout, headerTimeout time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          16,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: headerTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
	}
}

// New returns a client for the envd at cfg.Addr.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("envdclient: Addr is required")
	}
	if cfg.UnaryTimeout == 0 {
		cfg.UnaryTimeout = DefaultUnaryTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	c := &Client{
		base:   "http://" + cfg.Addr,
		unaryT: newTransport(cfg.DialTimeout, cfg.UnaryTimeout),
		strT:   newTransport(cfg.DialTimeout, 0),
	}
	c.SetAccessToken(cfg.AccessToken)
	c.unary = &http.Client{Transport: c.unaryT, Timeout: cfg.UnaryTimeout}
	c.stream = &http.Client{Transport: c.strT}
	c.opts = connect.WithClientOptions(
		connect.WithInterceptors(authInterceptor{c}),
		// envd is on the same host (a TAP or veth away): gzip would only
		// burn the capsule's CPU, several times over what moving the
		// bytes costs, so responses are never compressed.
		connect.WithAcceptCompression("gzip", nil, nil),
	)
	c.Process = processconnect.NewProcessClient(c.stream, c.base, c.opts)
	c.Filesystem = filesystemconnect.NewFilesystemClient(c.unary, c.base, c.opts)
	return c, nil
}

// Addr returns the base URL of envd.
func (c *Client) Addr() string { return c.base }

// SetAccessToken sets the token sent on every request ("" sends none).
func (c *Client) SetAccessToken(tok string) { c.token.Store(&tok) }

// AccessToken returns the current token.
func (c *Client) AccessToken() string { return *c.token.Load() }

// CloseIdleConnections closes every idle pooled connection to envd.
func (c *Client) CloseIdleConnections() {
	c.unaryT.CloseIdleConnections()
	c.strT.CloseIdleConnections()
}

type userKey struct{}

// WithUser makes Connect calls and file transfers made with ctx act as user.
func WithUser(ctx context.Context, user string) context.Context {
	if user == "" {
		return ctx
	}
	return context.WithValue(ctx, userKey{}, user)
}

func userFrom(ctx context.Context) string {
	u, _ := ctx.Value(userKey{}).(string)
	return u
}

// BasicUser is the Authorization value envd reads the acting user from.
func BasicUser(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

func (c *Client) setHeaders(ctx context.Context, h http.Header) {
	if tok := c.AccessToken(); tok != "" {
		h.Set(AccessTokenHeader, tok)
	}
	if u := userFrom(ctx); u != "" {
		h.Set("Authorization", BasicUser(u))
	}
}

// authInterceptor adds the token and user headers to every Connect call.
type authInterceptor struct{ c *Client }

func (a authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		a.c.setHeaders(ctx, req.Header())
		return next(ctx, req)
	}
}

func (a authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		a.c.setHeaders(ctx, conn.RequestHeader())
		return conn
	}
}

func (a authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// StatusError is a non-success answer from envd.
type StatusError struct {
	Op      string
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("envd %s: status %d: %s", e.Op, e.Status, e.Message)
}

// IsStatus reports whether err is a StatusError with the given status.
func IsStatus(err error, status int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == status
}

func statusError(op string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	msg := strings.TrimSpace(string(b))
	var body struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &body) == nil && body.Message != "" {
		msg = body.Message
	}
	return &StatusError{Op: op, Status: resp.StatusCode, Message: msg}
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c.setHeaders(ctx, req.Header)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envd %s %s: %w", method, path, err)
	}
	return resp, nil
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// unaryJSON does a unary request, expects status want and decodes the
// body into out when out is not nil.
func (c *Client) unaryJSON(ctx context.Context, op, method, path string, in, out any, want int) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, c.unary, method, path, body, ct)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != want {
		return statusError(op, resp)
	}
	if out != nil {
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
			return fmt.Errorf("envd %s: decode: %w", op, err)
		}
	}
	return nil
}

// Health checks GET /health; envd answers 200 when it serves.
func (c *Client) Health(ctx context.Context) error {
	return c.unaryJSON(ctx, "health", http.MethodGet, "/health", nil, nil, http.StatusOK)
}

// Prime opens the connection the process calls use (a GET /health on
// the streaming transport), so the first exec after a create does not
// pay for a new connection. Its error is envd's.
func (c *Client) Prime(ctx context.Context) error {
	resp, err := c.do(ctx, c.stream, http.MethodGet, "/health", nil, "")
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return statusError("health", resp)
	}
	return nil
}

// WaitHealthy polls Health until it succeeds or ctx ends: first after
// 250 µs, then doubling the pause up to interval.
func (c *Client) WaitHealthy(ctx context.Context, interval time.Duration) error {
	t := time.NewTimer(0)
	defer t.Stop()
	var last error
	wait := min(250*time.Microsecond, interval)
	for {
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("envd not healthy: %w (last error: %w)", ctx.Err(), last)
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		last = c.Health(pctx)
		cancel()
		if last == nil {
			return nil
		}
		// Poll fast at first (envd usually listens within a few ms of its
		// start), then back off to interval.
		wait = min(2*wait, interval)
		t.Reset(wait)
	}
}

// VersionInfo is the /version body.
type VersionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
}

// Version returns envd's build information.
func (c *Client) Version(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.unaryJSON(ctx, "version", http.MethodGet, "/version", nil, &v, http.StatusOK)
	return v, err
}

// Metrics is the /metrics body: guest-side resource use.
type Metrics struct {
	TS         int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	DiskTotal  uint64  `json:"disk_total"`
	DiskUsed   uint64  `json:"disk_used"`
}

// Metrics reads envd's /metrics.
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	var m Metrics
	err := c.unaryJSON(ctx, "metrics", http.MethodGet, "/metrics", nil, &m, http.StatusOK)
	return m, err
}

// InitRequest is the /init body.
type InitRequest struct {
	CapsuleID      string            `json:"capsule_id"`
	TemplateID     string            `json:"template_id"`
	EnvVars        map[string]string `json:"env_vars,omitempty"`
	DefaultUser    string            `json:"default_user,omitempty"`
	DefaultWorkdir string            `json:"default_workdir,omitempty"`
	Timestamp      time.Time         `json:"timestamp"`
	AccessToken    string            `json:"access_token,omitempty"`
}

// Init posts /init (identity, env, clock, access token). On success the
// client sends req.AccessToken from then on.
func (c *Client) Init(ctx context.Context, req InitRequest) error {
	if err := c.unaryJSON(ctx, "init", http.MethodPost, "/init", req, nil, http.StatusNoContent); err != nil {
		return err
	}
	if req.AccessToken != "" {
		c.SetAccessToken(req.AccessToken)
	}
	return nil
}

// PrepareSnapshot posts /snapshot/prepare; envd answers 200 once quiesced.
func (c *Client) PrepareSnapshot(ctx context.Context) error {
	return c.unaryJSON(ctx, "snapshot prepare", http.MethodPost, "/snapshot/prepare", nil, nil, http.StatusOK)
}

// EntryInfo is one element of envd's upload answer.
type EntryInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

func filesPath(path, user string) string {
	q := url.Values{}
	q.Set("path", path)
	if user != "" {
		q.Set("username", user)
	}
	return "/files?" + q.Encode()
}

// Upload streams r to path in the capsule (as user, "" = default user)
// and returns the written entries. Parents are created.
func (c *Client) Upload(ctx context.Context, path, user string, r io.Reader) ([]EntryInfo, error) {
	resp, err := c.do(ctx, c.stream, http.MethodPost, filesPath(path, user), r, "application/octet-stream")
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, statusError("upload", resp)
	}
	var out []EntryInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("envd upload: decode: %w", err)
	}
	return out, nil
}

// Download opens path in the capsule for reading. The caller closes the
// body; size is -1 when envd did not say.
func (c *Client) Download(ctx context.Context, path, user string) (body io.ReadCloser, size int64, err error) {
	resp, err := c.do(ctx, c.stream, http.MethodGet, filesPath(path, user), nil, "")
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		defer drain(resp)
		return nil, 0, statusError("download", resp)
	}
	size = -1
	if v := resp.Header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			size = n
		}
	}
	return resp.Body, size, nil
}
