// Package api is the control plane's HTTP API: the chi router, middleware
// (request IDs, logs, metrics, panics, authentication), the handlers for
// auth, teams, API keys, hosts and capsules (REST and WebSocket), and the
// OpenAPI document served at /openapi.yaml. Capsule handlers are thin:
// they decode, call the capsule service (internal/capsules) with the
// caller's scope, and encode; the service's typed errors become API
// errors in errors.go.
//
// Invariants:
//   - Every error a client sees is {"code","message"} from one *Error type,
//     turned into a status by httpStatus only; internal errors are logged
//     with the request ID and shown as "internal error (request id …)".
//   - Team data is read and changed only for the caller's current team
//     (the JWT's team or the API key's team), through store methods that
//     take the team ID.
//   - Credentials come from X-API-Key or Authorization: Bearer. A query
//     token is read only by optionalAPIKeyOrJWT, which is mounted only on
//     WebSocket routes and refuses anything that is not a real handshake.
//   - Client-supplied X-Request-Id, X-Forwarded-* and similar headers are
//     never used for identity or authorization.
//   - JSON bodies are size-limited and decoded strictly (unknown fields
//     and trailing data are errors).
package api

import (
	_ "embed"
	"log/slog"
	"net/http"
	"time"
	// openapi.yaml
	"github.com/wrenn-dev/wrenn/internal/email"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/usage"
	"github.com/wrenn-dev/wrenn/internal/webhooks"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

//go:embed openapi.yaml
var openapiYAML []byte

// OpenAPI returns the OpenAPI document.
func OpenAPI() []byte { return openapiYAML }

// Config configures the API. Store, Sessions, States and Agents are
// required.
type Config struct {
	Store     store.Store
	Sessions  *auth.Sessions
	States    *auth.StateSigner
	Agents    *agents.Pool
	Scheduler *scheduler.Scheduler
	// Capsules is the capsule service; nil builds one from Store, Agents,
	// Scheduler, Audit, OnCapsuleGone and ExecTimeout.
	Capsules *capsules.Service
	// GitHub, when set, enables GitHub sign-in.
	GitHub *auth.GitHubClient
	// OnCapsuleGone is called after a capsule is destroyed (e.g. to evict
	// cached proxies).
	OnCapsuleGone func(capsuleID string)
	// OnHostReturned is called when a host registers, or heartbeats after
	// silence or an agent restart (e.g. to reconcile it at once).
	OnHostReturned func(hostID string)
	// Audit, when set, records team and admin actions.
	Audit *audit.Recorder
	// Events records host.up (heartbeats); EventHub serves
	// GET /v1/events/stream (nil: 503); Webhooks serves /v1/webhooks (nil:
	// 503). See internal/events and internal/webhooks.
	Events   *events.Recorder
	EventHub *events.Hub
	Webhooks *webhooks.Service
	// Usage, when set, serves GET /v1/capsules/usage.
	Usage *usage.Service
	// Mailer sends verification and password-reset mail; nil logs them.
	Mailer email.Mailer
	// Registry receives the API's metrics; nil disables /metrics.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// PublicURL is where browsers reach the dashboard (OAuth redirects),
	// e.g. "https://wrenn.example"; default "".
	PublicURL string
	// SecureCookies sets the Secure flag on cookies (HTTPS deployments).
	SecureCookies bool
	// DisableSignup refuses new email sign-ups.
	DisableSignup bool
	// ProxyPort and ProxyDomain tell the dashboard where capsule ports
	// are (GET /v1/auth/options); 0 and "" when unknown.
	ProxyPort   int
	ProxyDomain string
	// MaxBodyBytes bounds JSON bodies (default 1 MiB).
	MaxBodyBytes int64
	// MaxFileBytes bounds streamed file uploads (default 1 GiB).
	MaxFileBytes int64
	// HeartbeatInterval is what hosts are told to use (default 30 s).
	HeartbeatInterval time.Duration
	// HostTokenTTL is how long a registration token lives (default 24 h).
	HostTokenTTL time.Duration
	// WSOriginPatterns are extra origins allowed to open WebSockets
	// (same-origin is always allowed).
	WSOriginPatterns []string
	// RateLimits bound failed logins and reset mails (defaults apply to
	// zero fields).
	RateLimits RateLimits
	// ExecTimeout bounds a unary exec when the request gives none
	// (default 60 s).
	ExecTimeout time.Duration
	// MaxUnauthInFlightPerIP bounds the requests one client address may
	// have in flight on the unauthenticated routes (default 16).
	MaxUnauthInFlightPerIP int
	// Builds runs team builds (internal/builds.Runner); nil refuses them
	// (503). BuildDir holds their uploads until they end (default the
	// system temp dir); MaxContextBytes bounds one upload (default 8 GiB).
	Builds          BuildRunner
	BuildDir        string
	MaxContextBytes int64
}

// API is the HTTP API.
type API struct {
	cfg      Config
	capsules *capsules.Service
	log      *slog.Logger
	metrics  *metrics
	router   chi.Router
	limits   rateLimiters
	unauth   *perIPLimiter
	reaper   ptyReaper // delayed kills of dropped shells (?grace=)
}

// New builds the API.
func New(cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = discard
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = 1 << 30
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 30 * time.Second
	}
	if cfg.HostTokenTTL <= 0 {
		cfg.HostTokenTTL = 24 * time.Hour
	}
	if cfg.ExecTimeout <= 0 {
		cfg.ExecTimeout = 60 * time.Second
	}
	if cfg.Scheduler == nil {
		cfg.Scheduler = scheduler.New(cfg.Store)
	}
	if cfg.Capsules == nil {
		cfg.Capsules = capsules.New(capsules.Config{
			Store: cfg.Store, Agents: cfg.Agents, Scheduler: cfg.Scheduler, Audit: cfg.Audit,
			OnGone: cfg.OnCapsuleGone, ExecTimeout: cfg.ExecTimeout, Logger: cfg.Logger,
		})
	}
	a := &API{
		cfg: cfg, capsules: cfg.Capsules, log: cfg.Logger.With("component", "api"),
		limits: newRateLimiters(cfg.RateLimits), unauth: newPerIPLimiter(cfg.MaxUnauthInFlightPerIP),
	}
	if cfg.Registry != nil {
		a.metrics = newMetrics(cfg.Registry, cfg.Store, a.log)
	}
	a.router = a.routes()
	return a
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.router.ServeHTTP(w, r) }

// Routes returns the router (for route enumeration in tests).
func (a *API) Routes() chi.Routes { return a.router }

func (a *API) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(a.observe)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, errorf(CodeNotFound, "no such route: %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, errorf(CodeMethodNotAllowed, "method %s is not allowed here", r.Method))
	})

	r.Get("/health", a.health)
	r.Get("/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(openapiYAML)
	})
	r.Get("/docs", a.docs)
	if a.cfg.Registry != nil {
		r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(a.cfg.Registry, promhttp.HandlerOpts{}))
	}

	r.Route("/v1", func(r chi.Router) {
		// Unauthenticated (bounded in flight per client address).
		r.Group(func(r chi.Router) {
			r.Use(a.limitUnauthenticated)
			r.Post("/auth/signup", a.signup)
			r.Post("/auth/login", a.login)
			a.mountEmailFlows(r) // verify, verify/resend (authenticated), password/forgot, password/reset
			r.Get("/auth/github", a.githubStart)
			r.Get("/auth/github/callback", a.githubCallback)
			r.Get("/auth/options", a.authOptions)
			r.Post("/hosts/register", a.registerHost)
		})
		r.With(a.requireHost).Post("/hosts/{hostID}/heartbeat", a.heartbeat)

		// WebSocket routes: the only place a query token is accepted.
		r.Group(func(r chi.Router) {
			r.Use(a.optionalAPIKeyOrJWT)
			r.Group(func(r chi.Router) {
				r.Use(a.requireTeam)
				r.Get("/capsules/{capsuleID}/exec/stream", a.wsExec)
				r.Get("/capsules/{capsuleID}/pty", a.wsPTY)
				r.Get("/capsules/{capsuleID}/processes/{pid}/stream", a.wsProcess)
			})
		})
		r.Group(func(r chi.Router) {
			r.Use(markAdminWS, a.optionalAPIKeyOrJWT)
			r.Get("/admin/capsules/{capsuleID}/pty", a.wsAdminPTY)
		})

		// Header-authenticated routes.
		r.Group(func(r chi.Router) {
			r.Use(a.requireAuth)
			r.Get("/me", a.me)
			r.Patch("/me", a.updateMe)
			r.Post("/auth/github/connect", a.githubConnect)
			r.Get("/teams", a.listTeams)
			r.Post("/teams", a.createTeam)
			r.Post("/invites/accept", a.acceptInvite)
			r.Route("/teams/{teamID}", func(r chi.Router) {
				r.Patch("/", a.updateTeam)
				r.Delete("/", a.deleteTeam)
				r.Post("/switch", a.switchTeam)
				r.Get("/members", a.listMembers)
				r.Patch("/members/{userID}", a.updateMember)
				r.Delete("/members/{userID}", a.removeMember)
				r.Get("/invites", a.listInvites)
				r.Post("/invites", a.createInvite)
				r.Delete("/invites/{inviteID}", a.deleteInvite)
			})

			r.Group(func(r chi.Router) {
				r.Use(a.requireTeam)
				r.Get("/api-keys", a.listKeys)
				r.Post("/api-keys", a.createKey)
				r.Delete("/api-keys/{keyID}", a.deleteKey)
				r.Get("/templates", a.listTemplates)
				r.Get("/templates/{templateID}", a.getTemplate)
				r.Get("/templates/builds", a.listTeamBuilds)
				r.Post("/templates/builds", a.createTeamBuild)
				r.Get("/templates/builds/{buildID}", a.getTeamBuild)
				r.Post("/templates/builds/{buildID}/cancel", a.cancelTeamBuild)
				r.Get("/templates/builds/{buildID}/logs", a.teamBuildLogs)
				r.Delete("/templates/{templateID}", a.deleteTemplate)
				r.Patch("/templates/{templateID}", a.updateTemplate)
				r.Post("/hosts/tokens", a.createTeamHostToken)

				r.Get("/audit-logs", a.teamAuditLogs)
				r.Get("/events", a.listEvents)
				r.Get("/events/stream", a.streamEvents)
				r.Get("/webhooks", a.listWebhooks)
				r.Post("/webhooks", a.createWebhook)
				r.Get("/webhooks/{webhookID}", a.getWebhook)
				r.Patch("/webhooks/{webhookID}", a.updateWebhook)
				r.Delete("/webhooks/{webhookID}", a.deleteWebhook)
				r.Post("/webhooks/{webhookID}/test", a.testWebhook)
				r.Post("/webhooks/{webhookID}/rotate-secret", a.rotateWebhookSecret)
				r.Get("/webhooks/{webhookID}/deliveries", a.webhookDeliveries)
				r.Get("/volumes", a.listVolumes)
				r.Post("/volumes", a.createVolume)
				r.Get("/volumes/{volumeName}", a.getVolume)
				r.Delete("/volumes/{volumeName}", a.deleteVolume)
				r.Get("/volumes/{volumeName}/files", a.readVolumeFile)
				r.Put("/volumes/{volumeName}/files", a.writeVolumeFile)
				r.Delete("/volumes/{volumeName}/files", a.deleteVolumeFile)
				r.Get("/volumes/{volumeName}/files/list", a.listVolumeFiles)
				r.Get("/capsules/usage", a.capsuleUsage)
				r.Get("/capsules", a.listCapsules)
				r.Post("/capsules", a.createCapsule)
				r.Route("/capsules/{capsuleID}", func(r chi.Router) {
					r.Use(capsuleContent)
					r.Get("/", a.getCapsule)
					r.Delete("/", a.deleteCapsule)
					r.Post("/pause", a.pauseCapsule)
					r.Post("/snapshot", a.snapshotCapsule)
					r.Post("/fork", a.forkCapsule)
					r.Post("/resume", a.resumeCapsule)
					r.Post("/timeout", a.timeoutCapsule)
					r.Put("/public", a.publicCapsule)
					r.Put("/network", a.networkCapsule)
					r.Post("/exec", a.execCapsule)
					r.Get("/metrics", a.capsuleMetrics)
					r.Get("/processes", a.listProcesses)
					r.Post("/processes", a.startProcess)
					r.Delete("/processes/{pid}", a.killProcess)
					r.Get("/files", a.readFile)
					r.Put("/files", a.writeFile)
					r.Delete("/files", a.removeFile)
					r.Get("/files/list", a.listFiles)
					r.Post("/files/mkdir", a.mkdir)
				})
			})

			r.Route("/admin", func(r chi.Router) {
				r.Use(a.requireAdmin)
				r.Post("/hosts/tokens", a.createAdminHostToken)
				r.Get("/hosts", a.listHosts)
				r.Get("/hosts/{hostID}", a.getHost)
				r.Delete("/hosts/{hostID}", a.deleteHost)
				r.Post("/hosts/{hostID}/drain", a.drainHost)
				r.Post("/hosts/{hostID}/undrain", a.undrainHost)
				a.mountAdmin(r)
			})
		})
	})
	return r
}

func (a *API) health(w http.ResponseWriter, r *http.Request) {
	if err := a.cfg.Store.Ping(r.Context()); err != nil {
		a.log.WarnContext(r.Context(), "health: store ping failed", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, wrennapi.Health{Status: wrennapi.HealthStatusUnavailable})
		return
	}
	writeJSON(w, http.StatusOK, wrennapi.Health{Status: wrennapi.HealthStatusOk})
}
