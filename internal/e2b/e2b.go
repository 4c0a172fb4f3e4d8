// Package e2b serves an E2B-compatible API over the capsule service, so
// that code written for E2B's SDKs runs on Wrenn after changing two URLs
// and an API key: <url>/e2b is the SDK's apiUrl and <url>/e2b/envd its
// sandboxUrl. It is a translation layer: every capsule action goes
// through internal/capsules (never the agents' life-cycle RPCs or the
// store's transitions directly).
//
// Invariants:
//   - API calls authenticate with a Wrenn API key in X-API-Key (what the
//     E2B SDK sends), through the API's own authentication, and act in
//     the key's team scope; another team's sandbox is "not found".
//   - Every create and connect answer carries an envdAccessToken (an HMAC
//     of the capsule ID under a key derived from the server secret), and
//     /e2b/envd refuses any call without that token for the sandbox named
//     in E2b-Sandbox-Id (401), or without a valid signature for a signed
//     file URL. The client's token never reaches the capsule: the agent
//     swaps in the capsule's own envd token.
//   - Errors are E2B-shaped, {"code": <status>, "message"}; features Wrenn
//     does not have yet answer 501, unknown routes 404, never a 500 for a
//     client's mistake.
package e2b

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// Prefix is where the control plane mounts the E2B API.
const Prefix = "/e2b"

// EnvdVersion is the envd version reported to the SDK: Wrenn's envd
// speaks E2B's envd protocol at this level (octet-stream uploads, envd
// close, recursive watch).
const EnvdVersion = "0.5.7"

// Authenticator authenticates an API call and returns the caller's scope
// (internal/api.API.TeamScope).
type Authenticator func(r *http.Request) (capsules.Scope, error)

// Config configures the handler. All fields but Logger and MaxBodyBytes
// are required.
type Config struct {
	Capsules *capsules.Service
	Store    store.Store
	Agents   *agents.Pool
	Auth     Authenticator
	// Key derives the sandboxes' envd access tokens.
	Key []byte
	// MaxBodyBytes bounds JSON bodies (default 1 MiB).
	MaxBodyBytes int64
	// MaxFileBytes bounds a request body on the envd route (file
	// uploads; default 1 GiB plus 1 MiB of multipart framing).
	MaxFileBytes int64
	Logger       *slog.Logger
}

// Handler is the E2B-compatible API.
type Handler struct {
	cfg       Config
	transport http.RoundTripper
	log       *slog.Logger
	router    chi.Router
}

// New returns the handler; mount it at Prefix.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = 1<<30 + 1<<20
	}
	h := &Handler{cfg: cfg, log: cfg.Logger.With("component", "e2b")}
	if cfg.Agents != nil {
		// The pool's transport (TLS, timeouts) with larger buffers for
		// file transfers.
		if tr, ok := cfg.Agents.Transport().(*http.Transport); ok {
			tr = tr.Clone()
			tr.WriteBufferSize, tr.ReadBufferSize = 1<<20, 1<<20
			h.transport = tr
		} else {
			h.transport = cfg.Agents.Transport()
		}
	}
	h.router = h.routes()
	return h
}

// ServeHTTP implements http.Handler (for paths under Prefix).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.router.ServeHTTP(w, r) }

func (h *Handler) routes() chi.Router {
	r := chi.NewRouter()
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route in Wrenn's E2B-compatible API: "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed here")
	})
	r.Route(Prefix, func(r chi.Router) {
		// envd calls carry no API key: the sandbox's access token
		// authenticates them.
		r.Handle("/envd", http.HandlerFunc(h.envd))
		r.Handle("/envd/*", http.HandlerFunc(h.envd))

		r.Group(func(r chi.Router) {
			r.Use(h.authn)
			r.Post("/sandboxes", h.create)
			r.Post("/v2/sandboxes", h.create)
			r.Get("/sandboxes", h.listV1)
			r.Get("/v2/sandboxes", h.list)
			r.Get("/sandboxes/{id}", h.get)
			r.Delete("/sandboxes/{id}", h.kill)
			r.Post("/sandboxes/{id}/timeout", h.setTimeout)
			r.Post("/sandboxes/{id}/refreshes", h.refresh)
			r.Post("/sandboxes/{id}/pause", h.pause)
			r.Post("/sandboxes/{id}/resume", h.resume)
			r.Post("/v2/sandboxes/{id}/connect", h.connect)
			r.Get("/sandboxes/{id}/metrics", h.metrics)
			r.Get("/templates", h.listTemplates)
			r.Get("/templates/{id}", h.getTemplate)
			r.Post("/sandboxes/{id}/snapshots", h.createSnapshot)
			r.Post("/sandboxes/{id}/fork", h.fork)
			r.Get("/snapshots", h.listSnapshots)
			r.Get("/volumes", h.listVolumes)
			r.Post("/volumes", h.createVolume)
			r.Get("/volumes/{vid}", h.getVolume)
			r.Delete("/volumes/{vid}", h.deleteVolume)

			// Features other issues add; 501 until they are wired.
			for _, nf := range []struct{ method, path, what string }{
				{"GET", "/sandboxes/{id}/logs", "sandbox logs"},
				{"GET", "/v2/sandboxes/{id}/logs", "sandbox logs"},
				{"GET", "/sandboxes/metrics", "metrics of several sandboxes"},
				{"PUT", "/sandboxes/{id}/network", "network rules"},
				{"POST", "/templates", "template builds"},
				{"POST", "/v2/templates", "template builds"},
				{"POST", "/v3/templates", "template builds"},
				{"DELETE", "/templates/{id}", "template deletion through the E2B API"},
				{"GET", "/templates/aliases/{alias}", "template aliases"},
				{"GET", "/secrets", "secrets"},
				{"POST", "/secrets", "secrets"},
			} {
				r.Method(nf.method, nf.path, notSupported(nf.what))
			}
		})
	})
	return r
}

func notSupported(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotImplemented, what+" is not supported yet by Wrenn's E2B-compatible API")
	}
}

type scopeKey struct{}

func (h *Handler) authn(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc, err := h.cfg.Auth(r)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(contextWithScope(r.Context(), sc)))
	})
}

// envdToken is the access token of capsule id's envd route.
func (h *Handler) envdToken(id string) string {
	m := hmac.New(sha256.New, h.cfg.Key)
	m.Write([]byte("e2b envd access token v1\x00" + id))
	return "wea_" + hex.EncodeToString(m.Sum(nil))
}

// writeError writes E2B's error shape.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail maps a service or API error to E2B's error shape.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if errors.As(err, &he) {
		writeError(w, he.status, he.msg)
		return
	}
	status, _, msg := api.Status(err)
	if status >= 500 {
		h.log.WarnContext(r.Context(), "e2b request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, status, msg)
}

// decode reads an optional JSON body. Unknown fields are allowed: the SDK
// sends fields of newer API versions.
func (h *Handler) decode(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
	err := json.NewDecoder(r.Body).Decode(v)
	var mbe *http.MaxBytesError
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return nil
	case errors.As(err, &mbe):
		return &httpError{http.StatusRequestEntityTooLarge, "request body is too large"}
	default:
		return &httpError{http.StatusBadRequest, "request body is not valid JSON: " + clip(err.Error())}
	}
}

type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return strings.ToValidUTF8(s, "")
}
