// Package wrenn is the Go SDK for Wrenn: a typed client for the control
// plane's REST and WebSocket API. Create capsules (disposable Linux
// sandboxes), run commands in them with buffered or streamed output, open
// interactive terminals, move files in and out as streams, pause, resume
// and remove them.
//
//	c, err := wrenn.New("http://127.0.0.1:9725", os.Getenv("WRENN_API_KEY"))
//	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
//	res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"hello"}})
//
// Every method takes a context; cancelling it aborts the request (and
// closes a stream). Errors the API returns are *Error values carrying the
// API's {"code","message"}; a server that cannot be reached gives a
// *ConnectionError. The client is safe for concurrent use.
package wrenn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Version is sent in the User-Agent header.
const Version = "0.1.0"

// Client talks to one Wrenn control plane with one API key.
type Client struct {
	base *url.URL
	key  string
	hc   *http.Client
	ua   string

	// Files reads and writes files inside capsules.
	Files *FilesService
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient uses hc for every request (default: a client without a
// global timeout, since file transfers and streams can be long; bound
// calls with their contexts).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(c *Client) { c.ua = ua } }

// New returns a client for the Wrenn at baseURL (e.g.
// "http://127.0.0.1:9725") authenticating with apiKey ("wrn_…").
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("wrenn: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("wrenn: base URL %q must be http:// or https:// with a host", baseURL)
	}
	c := &Client{base: u, key: apiKey, hc: &http.Client{}, ua: "wrenn-go/" + Version}
	for _, o := range opts {
		o(c)
	}
	c.Files = &FilesService{c: c}
	return c, nil
}

// BaseURL is the control plane's URL.
func (c *Client) BaseURL() string { return c.base.String() }

// Error is an error the API returned: the HTTP status and the API's
// {"code","message"} (and request ID, to quote when reporting a problem).
type Error struct {
	StatusCode int
	Code       string
	Message    string
	RequestID  string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	if e.Code == "" {
		return fmt.Sprintf("wrenn: HTTP %d: %s", e.StatusCode, msg)
	}
	return fmt.Sprintf("wrenn: %s: %s", e.Code, msg)
}

// Error codes the API uses (Error.Code).
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeUnauthenticated  = "unauthenticated"
	CodePermissionDenied = "permission_denied"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeAlreadyExists    = "already_exists"
	CodePayloadTooLarge  = "payload_too_large"
	CodeNotImplemented   = "not_implemented"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// ErrorCode returns the API error code of err ("" when err is not an
// *Error).
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsNotFound reports whether err is the API's not_found.
func IsNotFound(err error) bool { return ErrorCode(err) == CodeNotFound }

// IsUnauthenticated reports whether err means the API key was refused.
func IsUnauthenticated(err error) bool { return ErrorCode(err) == CodeUnauthenticated }

// ConnectionError means the control plane could not be reached at all.
type ConnectionError struct {
	URL string
	Err error
}

func (e *ConnectionError) Error() string {
	return fmt.Sprintf("wrenn: cannot reach %s: %v", e.URL, e.Err)
}

func (e *ConnectionError) Unwrap() error { return e.Err }

// wrapTransport turns dial failures into a *ConnectionError.
func (c *Client) wrapTransport(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &ConnectionError{URL: c.base.String(), Err: op.Err}
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return &ConnectionError{URL: c.base.String(), Err: dnsErr}
	}
	return fmt.Errorf("wrenn: %w", err)
}

func (c *Client) endpoint(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func (c *Client) authorize(h http.Header) {
	if c.key != "" {
		h.Set("X-API-Key", c.key)
	}
	h.Set("User-Agent", c.ua)
}

// do sends a request and returns the response when its status is 2xx;
// otherwise the API's error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path, q), body)
	if err != nil {
		return nil, fmt.Errorf("wrenn: %w", err)
	}
	if s, ok := body.(sizedBody); ok {
		req.ContentLength = s.n
		if s.n == 0 {
			req.Body = http.NoBody
		}
	}
	c.authorize(req.Header)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.wrapTransport(err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError reads an API error body.
func decodeError(resp *http.Response) error {
	e := &Error{StatusCode: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body wrennapi.Error
	if json.Unmarshal(b, &body) == nil && body.Code != "" {
		e.Code, e.Message, e.RequestID = body.Code, body.Message, body.RequestID
	} else {
		e.Message = strings.TrimSpace(string(b))
	}
	return e
}

// call sends in (if not nil) as JSON and decodes the response into out
// (if not nil).
func (c *Client) call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("wrenn: encode request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, q, body, ct)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("wrenn: decode %s %s response: %w", method, path, err)
	}
	return nil
}

// Me describes the caller.
type Me = wrennapi.Me

// Team is a tenant.
type Team = wrennapi.Team

// Me returns who the API key belongs to (GET /v1/me); use it to check a key.
func (c *Client) Me(ctx context.Context) (*Me, error) {
	var m Me
	if err := c.call(ctx, http.MethodGet, "/v1/me", nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Health checks that the control plane and its store answer (GET /health).
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/health", nil, nil, nil)
}

func decodeJSONBody(resp *http.Response, out any) error {
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("wrenn: decode %s response: %w", resp.Request.URL.Path, err)
	}
	return nil
}
