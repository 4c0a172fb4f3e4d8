// Package controlplane assembles the control plane: it opens the store,
// builds auth, the agent pool, the scheduler, the port proxy, the audit
// recorder and the HTTP API into one Server, and runs the background loops
// (host liveness, the reconciler that aligns the store with what agents
// report, the hourly usage rollup, the metrics flusher and the template
// build runner).
//
// Invariants:
//   - The server is stateless: everything durable is in the store, so
//     several replicas can run against one PostgreSQL.
//   - Every http.Server has ReadHeaderTimeout and IdleTimeout.
//   - The API and the port proxy are served on separate listeners (Listen,
//     ProxyListen): capsule content never shares the API's origin.
//   - Run returns only after the HTTP servers and every background loop
//     have stopped (graceful shutdown, bounded by ShutdownTimeout).
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/e2b"
	"github.com/wrenn-dev/wrenn/internal/email"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/lease"
	"github.com/wrenn-dev/wrenn/internal/metricsflush"
	"github.com/wrenn-dev/wrenn/internal/proxy"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/store/postgres"
	"github.com/wrenn-dev/wrenn/internal/store/sqlite"
	"github.com/wrenn-dev/wrenn/internal/usage"
	"github.com/wrenn-dev/wrenn/internal/web"
	"github.com/wrenn-dev/wrenn/internal/webhooks"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// DefaultProxyListen is the port proxy's default address.
const DefaultProxyListen = "127.0.0.1:9726"

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Listen address (default 127.0.0.1:9725).
	Listen string
	// DB is a SQLite file path, or a PostgreSQL URL (postgres://…,
	// postgresql://…) or key=value DSN. Ignored when Store is set.
	DB string
	// Store, when set, is used instead of opening DB (wrenn up, tests).
	// The caller keeps ownership: Close does not close it.
	Store store.Store
	// Secret signs sessions and derives OAuth-state and host-credential
	// keys; at least 32 bytes. Every replica needs the same one.
	Secret []byte
	// SessionTTL default 24 h.
	SessionTTL time.Duration
	// PublicURL is where browsers reach Wrenn (OAuth redirects).
	PublicURL string
	// ProxyListen is the port proxy's own address (default
	// 127.0.0.1:9726): /proxy/{capsule}/{port}/… and, with ProxyDomain,
	// {port}-{capsule}.{ProxyDomain}. The API's listener serves neither.
	ProxyListen string
	// ProxyDomain enables {port}-{capsule}.{ProxyDomain} routing on the
	// proxy listener.
	ProxyDomain string
	// GitHub sign-in; disabled when ClientID is empty.
	GitHub auth.GitHubConfig
	// AgentCA, AgentClientCert and AgentClientKey configure TLS (mutual
	// with a client certificate) to agents on https:// addresses.
	AgentCA, AgentClientCert, AgentClientKey string
	// AgentResponseHeaderTimeout default 5 min.
	AgentResponseHeaderTimeout time.Duration
	// HeartbeatInterval hosts are asked to use (default 30 s); a host
	// silent for HeartbeatMisses intervals (default 3) is unavailable.
	HeartbeatInterval time.Duration
	HeartbeatMisses   int
	// ReconcileInterval default 30 s.
	ReconcileInterval time.Duration
	// ShutdownTimeout bounds graceful shutdown (default 15 s).
	ShutdownTimeout time.Duration
	DisableSignup   bool
	SecureCookies   bool
	// WSOriginPatterns are extra origins allowed to open WebSockets.
	WSOriginPatterns []string
	// UsageRollupInterval is how often completed days are rolled into
	// daily usage (default 1 h).
	UsageRollupInterval time.Duration
	// MetricsFlushInterval is how often the agents' 1 s guest samples are
	// copied into capsule metric snapshots (default 60 s; the agents keep
	// 10 minutes at 1 s). One replica at a time flushes (a lease).
	MetricsFlushInterval time.Duration
	// ReplicaID names this control-plane replica in the leases that keep
	// background jobs (reconciler, usage rollups, metrics flush) on one
	// replica at a time ("" = host name and a random suffix).
	ReplicaID string
	// DisableMetricsFlush turns the flusher off (for extra replicas).
	DisableMetricsFlush bool
	// BuildInterval is how often the template build runner looks for
	// queued builds (default 2 s). Every replica may run it: builds are
	// claimed with a conditional update.
	BuildInterval time.Duration
	// BuildPollInterval is how often a running build step checks for a
	// cancel (default 1 s).
	BuildPollInterval time.Duration
	// BuildStaleAfter is how long a running build may go without its
	// runner's heartbeat before another replica fails it as interrupted
	// (default builds.DefaultStaleAfter, 1 min).
	BuildStaleAfter time.Duration
	// DisableBuildRunner turns the template build runner off.
	DisableBuildRunner bool
	// BuildDir holds team builds' uploads (contexts, images) until the
	// build ends; default the system temp directory.
	BuildDir string
	// CapsuleInternetOff is the platform's ceiling (--capsule-internet=off):
	// no team capsule gets outbound internet; a request for it is 403.
	CapsuleInternetOff bool
	// DefaultIsolation is the platform's isolation of a capsule when
	// neither the create, nor its template, nor its team names one
	// (--default-isolation; default container).
	DefaultIsolation string
	// PausedRetention is how long a capsule paused by its on_timeout is
	// kept before it is deleted with its snapshots (--paused-retention,
	// default 720 h). Explicit and shutdown pauses are never deleted.
	PausedRetention time.Duration
	// LifecycleInterval is how often capsules past their timeout with
	// on_timeout pause are paused and retention runs (default 2 s).
	LifecycleInterval time.Duration
	// ResumeWait bounds a request's wait for an automatic resume (default
	// 2 min).
	ResumeWait time.Duration
	// Mailer sends verification and password-reset mail (default: the log
	// mailer, which writes the links to the log).
	Mailer email.Mailer
	Logger *slog.Logger
	// EventRetention is how long the event log keeps events
	// (--event-retention, default 30 days).
	EventRetention time.Duration
	// EventPollInterval is how often the SSE hub reads new events from the
	// store (default 500 ms; events written by this replica are streamed
	// at once).
	EventPollInterval time.Duration
	// WebhookAllowPrivate lets webhook URLs point at loopback, link-local,
	// private addresses and this host (--webhook-allow-private).
	WebhookAllowPrivate bool
	// Webhook delivery tuning (zero: the webhooks.Dispatcher defaults —
	// poll 1 s, first retry 5 s doubling to 1 h, retried for 24 h, lease
	// 1 min).
	WebhookPollInterval, WebhookBaseBackoff, WebhookMaxBackoff, WebhookRetryWindow, WebhookLease time.Duration
}

func (c *Config) fill() error {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:9725"
	}
	if c.ProxyListen == "" {
		c.ProxyListen = DefaultProxyListen
	}
	if len(c.Secret) < 32 {
		return errors.New("controlplane: Secret must be at least 32 bytes")
	}
	if c.DefaultIsolation == "" {
		c.DefaultIsolation = runtime.IsolationContainer
	}
	if !runtime.ValidIsolation(c.DefaultIsolation) {
		return fmt.Errorf("controlplane: default isolation %q is not one of %v", c.DefaultIsolation, runtime.KnownIsolations)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.SessionTTL, 24*time.Hour)
	def(&c.HeartbeatInterval, 30*time.Second)
	def(&c.ReconcileInterval, 30*time.Second)
	def(&c.ShutdownTimeout, 15*time.Second)
	def(&c.AgentResponseHeaderTimeout, 5*time.Minute)
	def(&c.UsageRollupInterval, time.Hour)
	def(&c.MetricsFlushInterval, time.Minute)
	def(&c.BuildInterval, 2*time.Second)
	def(&c.PausedRetention, capsules.DefaultPausedRetention)
	def(&c.LifecycleInterval, 2*time.Second)
	def(&c.ResumeWait, capsules.DefaultResumeWait)
	def(&c.EventRetention, events.DefaultRetention)
	if c.HeartbeatMisses <= 0 {
		c.HeartbeatMisses = 3
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Server is a control plane replica.
type Server struct {
	cfg       Config
	log       *slog.Logger
	store     store.Store
	ownStore  bool
	agents    *agents.Pool
	proxy     *proxy.Proxy
	api       *api.API
	handler   http.Handler
	registry  *prometheus.Registry
	scheduler *scheduler.Scheduler
	capsules  *capsules.Service
	usage     *usage.Service
	leases    *lease.Keeper
	builds    *builds.Runner // nil with DisableBuildRunner
	events    *events.Recorder
	eventHub  *events.Hub
	webhooks  *webhooks.Dispatcher
	closeOnce sync.Once

	returnMu  sync.Mutex
	bg        context.Context // the background loops' context, set by Serve
	returning map[string]bool // hosts being reconciled after a return → rerun wanted
	returnWG  sync.WaitGroup
}

// IsPostgresDSN reports whether db names PostgreSQL rather than a file.
func IsPostgresDSN(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://") ||
		strings.Contains(db, "host=") || strings.Contains(db, "dbname=")
}

// OpenStore opens (and migrates) the store db names.
func OpenStore(ctx context.Context, db string) (store.Store, error) {
	if db == "" {
		return nil, errors.New("controlplane: no database configured")
	}
	if IsPostgresDSN(db) {
		return postgres.Open(ctx, postgres.Options{DSN: db})
	}
	return sqlite.Open(ctx, sqlite.Options{Path: db})
}

// New builds a server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "controlplane"), store: cfg.Store}
	if s.store == nil {
		st, err := OpenStore(ctx, cfg.DB)
		if err != nil {
			return nil, err
		}
		s.store, s.ownStore = st, true
	}
	tc, err := agentTLS(cfg)
	if err != nil {
		s.Close()
		return nil, err
	}
	sessions, err := auth.NewSessions(auth.DeriveKey(cfg.Secret, "wrenn session v1"), cfg.SessionTTL)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.agents = agents.New(agents.Config{
		Key: auth.DeriveKey(cfg.Secret, "wrenn host credential v1"), TLS: tc,
		ResponseHeaderTimeout: cfg.AgentResponseHeaderTimeout,
	})
	s.proxy = proxy.New(proxy.Config{Resolve: s.resolveProxy, Domain: cfg.ProxyDomain, TLS: tc, Logger: s.log})
	s.registry = prometheus.NewRegistry()
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.leases = lease.New(s.store, cfg.ReplicaID, s.log)
	s.usage = &usage.Service{Store: s.store, Log: s.log, Gate: s.leases.Gate(leaseUsage, cfg.UsageRollupInterval)}
	s.scheduler = scheduler.New(s.store)
	var gh *auth.GitHubClient
	if cfg.GitHub.Enabled() {
		ghc := cfg.GitHub
		if ghc.RedirectURL == "" {
			ghc.RedirectURL = strings.TrimSuffix(cfg.PublicURL, "/") + "/v1/auth/github/callback"
		}
		gh = auth.NewGitHubClient(ghc, &http.Client{Timeout: 15 * time.Second})
	}
	rec := &audit.Recorder{Store: s.store, Logger: s.log}
	sealer, err := webhooks.NewSealer(auth.DeriveKey(cfg.Secret, "wrenn webhook secret v1"))
	if err != nil {
		s.Close()
		return nil, err
	}
	guard := &webhooks.Guard{AllowPrivate: cfg.WebhookAllowPrivate}
	s.webhooks = &webhooks.Dispatcher{
		Store: s.store, Sealer: sealer, Guard: guard, Logger: s.log.With("component", "webhooks"),
		Interval: cfg.WebhookPollInterval, BaseBackoff: cfg.WebhookBaseBackoff, MaxBackoff: cfg.WebhookMaxBackoff,
		RetryWindow: cfg.WebhookRetryWindow, Lease: cfg.WebhookLease,
	}
	s.eventHub = &events.Hub{Store: s.store, Interval: cfg.EventPollInterval, Logger: s.log}
	s.events = &events.Recorder{Store: s.store, Logger: s.log, OnAppend: func(store.Event) {
		s.eventHub.Notify()
		s.webhooks.Notify()
	}}
	hooks := &webhooks.Service{Store: s.store, Sealer: sealer, Guard: guard, OnQueued: s.webhooks.Notify}
	s.capsules = capsules.New(capsules.Config{
		Store: s.store, Agents: s.agents, Scheduler: s.scheduler, Audit: rec, Events: s.events, OnGone: s.proxy.Evict, Logger: cfg.Logger,
		InternetOff: cfg.CapsuleInternetOff, DefaultIsolation: cfg.DefaultIsolation, PausedRetention: cfg.PausedRetention, ResumeWait: cfg.ResumeWait,
	})
	var buildRunner api.BuildRunner
	if !cfg.DisableBuildRunner {
		s.builds = builds.New(builds.Config{
			Store: s.store, Agents: s.agents, Scheduler: s.scheduler, Capsules: s.capsules, Logger: s.log,
			PollInterval: cfg.BuildPollInterval, Events: s.events, StaleAfter: cfg.BuildStaleAfter,
		})
		buildRunner = s.builds
	}
	s.api = api.New(api.Config{
		Builds: buildRunner, BuildDir: cfg.BuildDir,
		Store: s.store, Sessions: sessions, States: auth.NewStateSigner(auth.DeriveKey(cfg.Secret, "wrenn oauth state v1")),
		Agents: s.agents, Scheduler: s.scheduler, Capsules: s.capsules, GitHub: gh,
		OnCapsuleGone: s.proxy.Evict, OnHostReturned: s.hostReturned, Registry: s.registry, Logger: cfg.Logger,
		Audit: rec, Events: s.events, EventHub: s.eventHub, Webhooks: hooks,
		Usage: s.usage, Mailer: cfg.Mailer,
		PublicURL: strings.TrimSuffix(cfg.PublicURL, "/"), SecureCookies: cfg.SecureCookies, DisableSignup: cfg.DisableSignup,
		ProxyPort: listenPort(cfg.ProxyListen), ProxyDomain: cfg.ProxyDomain,
		HeartbeatInterval: cfg.HeartbeatInterval, WSOriginPatterns: cfg.WSOriginPatterns,
	})
	// E2B-compatible API under /e2b (internal/e2b), beside the API.
	e2bAPI := e2b.New(e2b.Config{
		Capsules: s.capsules, Store: s.store, Agents: s.agents, Auth: s.api.TeamScope,
		Key: auth.DeriveKey(cfg.Secret, "wrenn e2b envd token v1"), Logger: cfg.Logger,
	})
	apiAndE2B := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, e2b.Prefix+"/") {
			e2bAPI.ServeHTTP(w, r)
			return
		}
		s.api.ServeHTTP(w, r)
	})
	app := web.Handler(apiAndE2B) // the dashboard at /, the API under /v1, /e2b, …
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A capsule host name ({port}-{capsule}.{ProxyDomain}) on the API's
		// listener gets the API's 404, not the app: that origin is the
		// port proxy's alone.
		if d := cfg.ProxyDomain; d != "" && strings.HasSuffix(strings.ToLower(hostOnly(r.Host)), "."+strings.ToLower(d)) {
			s.api.ServeHTTP(w, r)
			return
		}
		app.ServeHTTP(w, r)
	})
	return s, nil
}

func agentTLS(cfg Config) (*tls.Config, error) {
	if cfg.AgentCA == "" && cfg.AgentClientCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.AgentCA != "" {
		pem, err := os.ReadFile(cfg.AgentCA)
		if err != nil {
			return nil, fmt.Errorf("controlplane: agent CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("controlplane: agent CA: no certificates found")
		}
		tc.RootCAs = pool
	}
	if cfg.AgentClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.AgentClientCert, cfg.AgentClientKey)
		if err != nil {
			return nil, fmt.Errorf("controlplane: agent client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Handler is the API's HTTP handler (for the Listen address).
func (s *Server) Handler() http.Handler { return s.handler }

// ProxyHandler is the port proxy's HTTP handler (for the ProxyListen
// address): /proxy/{capsule}/{port}/… and {port}-{capsule}.{ProxyDomain}.
func (s *Server) ProxyHandler() http.Handler { return s.proxy.Handler() }

// Store returns the server's store.
func (s *Server) Store() store.Store { return s.store }

// HostCredential is the secret host hostID and the control plane share.
func (s *Server) HostCredential(hostID string) string { return s.agents.Credential(hostID) }

// SetLocalAgent registers the handler of a host agent that runs in this
// process (`wrenn up`): file transfers to its capsules are served through
// it without a loopback TCP hop (agents.Pool.SetLocal).
func (s *Server) SetLocalAgent(hostID string, h http.Handler) { s.agents.SetLocal(hostID, h) }

// Capsules returns the server's capsule service.
func (s *Server) Capsules() *capsules.Service { return s.capsules }

// Agent returns the RPC client the server uses for host h.
func (s *Server) Agent(h store.Host) hostagentv1connect.HostAgentServiceClient {
	return s.agents.Client(h)
}

// NewHTTPServer returns the http.Server for h with the server timeouts:
// headers within 10 s, and request bodies bounded per route class
// (api.BodyDeadlines: JSON bodies 10 s, uploads a minimum rate).
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           api.BodyDeadlines(h, api.BodyLimits{}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Run listens on cfg.Listen (API) and cfg.ProxyListen (port proxy) and
// serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("controlplane: listen: %w", err)
	}
	pln, err := net.Listen("tcp", s.cfg.ProxyListen)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("controlplane: proxy listen: %w", err)
	}
	return s.Serve(ctx, ln, pln)
}

// Serve serves the API on ln and the port proxy on proxyLn (nil: no port
// proxy) and runs the background loops until ctx ends, then shuts both
// servers down gracefully.
func (s *Server) Serve(ctx context.Context, ln, proxyLn net.Listener) error {
	srv := NewHTTPServer(s.handler, s.log)
	s.log.Info("control plane listening", "addr", ln.Addr().String())
	var psrv *http.Server
	if proxyLn != nil {
		psrv = NewHTTPServer(s.proxy.Handler(), s.log)
		s.log.Info("port proxy listening", "addr", proxyLn.Addr().String())
	}
	bg, cancel := context.WithCancel(ctx)
	s.returnMu.Lock()
	s.bg = bg
	s.returnMu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { s.leases.Loop(bg, leaseReconcile, s.cfg.ReconcileInterval, s.ReconcileOnce) })
	wg.Go(func() { s.leases.Loop(bg, leaseLifecycle, s.cfg.LifecycleInterval, s.capsules.Sweep) })
	wg.Go(func() { s.leases.Loop(bg, leaseDrain, s.cfg.ReconcileInterval, s.capsules.DrainPass) })
	wg.Go(func() { s.usage.Run(bg, s.cfg.UsageRollupInterval); s.leases.Release(leaseUsage) })
	if !s.cfg.DisableMetricsFlush {
		flusher := &metricsflush.Flusher{
			Store: s.store, Agents: s.agents, Log: s.log,
			Gate: s.leases.Gate(leaseMetricsFlush, s.cfg.MetricsFlushInterval),
		}
		wg.Go(func() { flusher.Run(bg, s.cfg.MetricsFlushInterval); s.leases.Release(leaseMetricsFlush) })
	}
	if s.builds != nil {
		wg.Go(func() { s.builds.Run(bg, s.cfg.BuildInterval) })
	}
	wg.Go(func() { s.eventHub.Run(bg) })
	wg.Go(func() { s.webhooks.Run(bg) })
	wg.Go(func() { events.Prune(bg, s.store, s.cfg.EventRetention, time.Hour, s.log) })
	servers := []*http.Server{srv}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if psrv != nil {
		servers = append(servers, psrv)
		go func() { errc <- psrv.Serve(proxyLn) }()
	}
	var err error
	running := len(servers)
	select {
	case err = <-errc:
		running--
	case <-ctx.Done():
	}
	// Either ctx ended or one server failed: stop all of them together.
	sctx, scancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	var sw sync.WaitGroup
	for _, hs := range servers {
		sw.Go(func() {
			if hs.Shutdown(sctx) != nil {
				_ = hs.Close()
			}
		})
	}
	sw.Wait()
	scancel()
	for ; running > 0; running-- {
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
			err = e
		}
	}
	cancel()
	wg.Wait()
	s.returnWG.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Lease names of the background jobs one replica runs at a time
// (lifecycle: timeout pauses and paused retention). The
// build runner needs none: it claims each build with a conditional update
// and runs it where its inputs were uploaded.
const (
	leaseReconcile    = "reconcile"
	leaseLifecycle    = "lifecycle"
	leaseUsage        = "usage-rollup"
	leaseMetricsFlush = "metrics-flush"
	leaseDrain        = "host-drain"
)

// Close releases the server's resources (and the store when it opened it).
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.agents != nil {
			s.agents.Close()
		}
		if s.proxy != nil {
			s.proxy.Close()
		}
		if s.ownStore && s.store != nil {
			_ = s.store.Close()
		}
	})
}

func (s *Server) resolveProxy(ctx context.Context, id string) (proxy.Target, error) {
	if !strings.HasPrefix(id, store.PrefixCapsule+"-") || len(id) > 80 {
		return proxy.Target{}, proxy.ErrNotFound
	}
	c, err := s.store.GetCapsuleUnscoped(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return proxy.Target{}, proxy.ErrNotFound
	}
	if err != nil {
		return proxy.Target{}, err
	}
	t := proxy.Target{Public: c.Public, AccessTokenHash: c.AccessTokenHash}
	// The host is looked up only once the proxy granted access, so a
	// request without a valid token costs one store read, like a request
	// for an unknown capsule.
	t.Locate = func(ctx context.Context) (proxy.Target, error) {
		if c.HostID == "" {
			return t, nil
		}
		h, err := s.store.GetHost(ctx, c.HostID)
		if err != nil {
			return proxy.Target{}, err
		}
		if c.Status.IsPaused() && c.AutoResume && h.Status != store.HostUnavailable {
			// auto_resume: the request wakes the capsule (one resume
			// however many requests wait), then is served.
			conn, err := s.capsules.Connect(ctx, capsules.SystemScope(), c.ID)
			if err != nil {
				return proxy.Target{}, fmt.Errorf("%w: %w", proxy.ErrResumeFailed, err)
			}
			c = conn.Capsule
		}
		t.AgentURL, t.HostSecret = s.agents.BaseURL(h.Address), s.agents.Credential(h.ID)
		t.Running = c.Status == store.CapsuleRunning && h.Status != store.HostUnavailable
		return t, nil
	}
	return t, nil
}

// hostOnly is the host part of a Host header (port dropped).
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

// listenPort is the port of a listen address such as 127.0.0.1:9726 (0
// when it has none or it is chosen by the kernel).
func listenPort(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return 0
	}
	return n
}
