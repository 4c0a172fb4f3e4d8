package apitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/wrenn-dev/wrenn/internal/api"
)

// maxCapture bounds how much of a response body the validator keeps; a
// JSON answer larger than this fails the test (no API answer is close).
const maxCapture = 8 << 20

// Validator checks responses against the API's OpenAPI document
// (internal/api/openapi.yaml) with kin-openapi. A response is checked as
// follows:
//   - WebSocket handshakes are skipped (their messages are not HTTP
//     bodies), and so is the port proxy (/proxy/…: the capsule answers).
//   - An error status (4xx, 5xx) must carry a JSON body matching the
//     Error schema, on any route, documented or not.
//   - Any other status must be documented for the route's method
//     (openapi3filter.ValidateResponse with IncludeResponseStatus), and a
//     JSON body must match its schema and declare no property the schema
//     does not (unless the schema allows additional properties).
//   - A body that is not JSON (file downloads, /metrics, /openapi.yaml,
//     /docs) is checked only for a content type the route documents.
//
// Failures are reported with tb.Errorf, so the test fails but goes on.
type Validator struct {
	doc    *openapi3.T
	router routers.Router
	// allowUndocumented skips responses of routes the document does not
	// list (routes an embedder adds through api.Config.AdminRoutes).
	allowUndocumented bool
}

// AllowUndocumented returns a copy of v that skips routes the document
// does not list: for servers with routes added by an embedder
// (api.Config.AdminRoutes), which are not part of the API.
func (v *Validator) AllowUndocumented() *Validator {
	c := *v
	c.allowUndocumented = true
	return &c
}

var (
	loadOnce sync.Once
	loaded   *Validator
	loadErr  error
)

// NewValidator loads and checks the document (once per test binary).
func NewValidator(tb testing.TB) *Validator {
	tb.Helper()
	loadOnce.Do(func() { loaded, loadErr = newValidator(api.OpenAPI()) })
	if loadErr != nil {
		tb.Fatalf("openapi.yaml: %v", loadErr)
	}
	return loaded
}

func newValidator(spec []byte) (*Validator, error) {
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("invalid document: %w", err)
	}
	// Match any host: test servers listen on random ports.
	doc.Servers = openapi3.Servers{{URL: "/"}}
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &Validator{doc: doc, router: r}, nil
}

// ValidateResponses wraps h so that every response it writes is checked
// against the document; a mismatch fails tb.
func ValidateResponses(tb testing.TB, h http.Handler) http.Handler {
	tb.Helper()
	return NewValidator(tb).Handler(tb, h)
}

// Handler wraps h: every response is checked when the handler returns.
func (v *Validator) Handler(tb testing.TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isWebSocket(r) {
			// Skipped explicitly: the handshake hijacks the connection.
			h.ServeHTTP(w, r)
			return
		}
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		if rec.hijacked {
			return
		}
		if err := v.Check(r, rec.status, w.Header(), rec.body.Bytes(), rec.overflow); err != nil {
			tb.Errorf("response does not match openapi.yaml: %s %s → %d: %v\nbody: %s",
				r.Method, r.URL.Path, rec.status, err, clip(rec.body.Bytes()))
		}
	})
}

// RoundTripper wraps rt (nil: http.DefaultTransport) so that every
// response a client receives is checked; a mismatch fails tb.
func (v *Validator) RoundTripper(tb testing.TB, rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		res, err := rt.RoundTrip(req)
		if err != nil || isWebSocket(req) || res.StatusCode == http.StatusSwitchingProtocols {
			return res, err
		}
		body, rerr := io.ReadAll(io.LimitReader(res.Body, maxCapture+1))
		rest := res.Body
		res.Body = readCloser{io.MultiReader(bytes.NewReader(body), rest), rest}
		if rerr != nil {
			return res, nil // the caller sees the read error itself
		}
		over := len(body) > maxCapture
		if over {
			body = body[:maxCapture]
		}
		if err := v.Check(req, res.StatusCode, res.Header, body, over); err != nil {
			tb.Errorf("response does not match openapi.yaml: %s %s → %d: %v\nbody: %s",
				req.Method, req.URL.Path, res.StatusCode, err, clip(body))
		}
		return res, nil
	})
}

// Check validates one response to req. truncated means body holds only
// the start of the real body.
func (v *Validator) Check(req *http.Request, status int, header http.Header, body []byte, truncated bool) error {
	if strings.HasPrefix(req.URL.Path, "/proxy/") {
		return nil // skipped explicitly: the capsule's own answers, passed through
	}
	isJSON := mediaType(header) == "application/json"
	route, params, err := v.findRoute(req)
	if err != nil && v.allowUndocumented {
		return nil
	}
	if status >= 400 && (err != nil || route.Operation.Responses.Status(status) == nil) {
		// Errors not documented one by one: the common Error object.
		if !isJSON {
			return fmt.Errorf("an error answer must be JSON, got Content-Type %q", header.Get("Content-Type"))
		}
		return v.checkSchema(v.doc.Components.Schemas["Error"], body)
	}
	if err != nil {
		return fmt.Errorf("route not in the document: %w", err)
	}
	if isJSON && truncated {
		return fmt.Errorf("JSON body larger than %d bytes", maxCapture)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		},
		Status: status,
		Header: header,
		Options: &openapi3filter.Options{
			IncludeResponseStatus: true,
			MultiError:            true,
			// Not JSON (file bytes, metrics, YAML, HTML): skipped
			// explicitly; the content type is checked below.
			ExcludeResponseBody: !isJSON,
		},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(req.Context(), in); err != nil {
		return err
	}
	resp := route.Operation.Responses.Status(status)
	if resp == nil || resp.Value == nil {
		return nil // unreachable: IncludeResponseStatus refused it
	}
	if len(resp.Value.Content) == 0 {
		if len(body) > 0 && isJSON {
			return fmt.Errorf("status %d is documented without a body, but the answer has one", status)
		}
		return nil
	}
	mt := resp.Value.Content.Get(header.Get("Content-Type"))
	if mt == nil {
		return fmt.Errorf("Content-Type %q is not documented for status %d (documented: %s)",
			header.Get("Content-Type"), status, strings.Join(slices.Sorted(maps.Keys(resp.Value.Content)), ", "))
	}
	if isJSON && mt.Schema != nil {
		var val any
		if err := json.Unmarshal(body, &val); err != nil {
			return err
		}
		if extra := undeclared(mt.Schema.Value, val, "$"); len(extra) > 0 {
			return fmt.Errorf("properties the document does not declare: %s", strings.Join(extra, ", "))
		}
	}
	return nil
}

// findRoute finds the documented operation; chi serves "/v1/teams/{id}/"
// for the document's "/v1/teams/{id}", so a trailing slash is dropped.
func (v *Validator) findRoute(req *http.Request) (*routers.Route, map[string]string, error) {
	if p := req.URL.Path; len(p) > 1 && strings.HasSuffix(p, "/") {
		r2 := req.Clone(req.Context())
		r2.URL.Path = strings.TrimSuffix(p, "/")
		r2.URL.RawPath = ""
		req = r2
	}
	return v.router.FindRoute(req)
}

func (v *Validator) checkSchema(ref *openapi3.SchemaRef, body []byte) error {
	var val any
	if err := json.Unmarshal(body, &val); err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	if err := ref.Value.VisitJSON(val, openapi3.MultiErrors(), openapi3.VisitAsResponse()); err != nil {
		return err
	}
	if extra := undeclared(ref.Value, val, "$"); len(extra) > 0 {
		return fmt.Errorf("properties the document does not declare: %s", strings.Join(extra, ", "))
	}
	return nil
}

// undeclared lists the object properties in val that s (with its allOf
// parts) does not declare, where s does not allow additional ones.
func undeclared(s *openapi3.Schema, val any, at string) []string {
	if s == nil {
		return nil
	}
	switch x := val.(type) {
	case map[string]any:
		props := map[string]*openapi3.Schema{}
		open := collect(s, props)
		var out []string
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if p, ok := props[k]; ok {
				out = append(out, undeclared(p, x[k], at+"."+k)...)
				continue
			}
			if s.AdditionalProperties.Schema != nil {
				out = append(out, undeclared(s.AdditionalProperties.Schema.Value, x[k], at+"."+k)...)
				continue
			}
			if !open {
				out = append(out, at+"."+k)
			}
		}
		return out
	case []any:
		if s.Items == nil {
			return nil
		}
		var out []string
		for i, e := range x {
			out = append(out, undeclared(s.Items.Value, e, fmt.Sprintf("%s[%d]", at, i))...)
		}
		return out
	}
	return nil
}

// collect gathers the properties of s and its allOf parts; it reports
// whether s allows properties it does not declare (additionalProperties
// true or a schema, or the x-extensible extension).
func collect(s *openapi3.Schema, props map[string]*openapi3.Schema) bool {
	open := (s.AdditionalProperties.Has != nil && *s.AdditionalProperties.Has) || s.AdditionalProperties.Schema != nil
	if ext, ok := s.Extensions["x-extensible"].(bool); ok && ext {
		open = true
	}
	for k, p := range s.Properties {
		props[k] = p.Value
	}
	for _, part := range s.AllOf {
		if collect(part.Value, props) {
			open = true
		}
	}
	return open
}

func mediaType(h http.Header) string {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return mt
}

func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// recorder passes a response through while keeping its status and the
// start of its body.
type recorder struct {
	http.ResponseWriter
	status   int
	wrote    bool
	hijacked bool
	overflow bool
	body     bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(p) // keep only what was sent (none for a 204)
	room := maxCapture - r.body.Len()
	if n > room {
		r.overflow = true
	}
	r.body.Write(p[:min(n, room)])
	return n, err
}

// Flush and Hijack keep streaming and upgrades working through the wrapper.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("hijack not supported")
	}
	r.hijacked = true
	return h.Hijack()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type readCloser struct {
	io.Reader
	io.Closer
}
