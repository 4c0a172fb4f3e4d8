// Package envd is the in-capsule agent's HTTP server: it owns the listener,
// the connection tracker that makes snapshots safe, the access-token gate,
// the plain HTTP endpoints (/health, /version, /metrics, /envs, /init,
// /snapshot/prepare) and the page-cache reclaimer, and it mounts the
// process and filesystem Connect services and the /files endpoint.
//
// Invariants:
//   - once /init has set an access token, every request must carry it in
//     X-Access-Token (compared in constant time; only its hash is stored);
//   - between /snapshot/prepare and the next /init (or the prepare timeout)
//     keep-alives are off and the reclaimer does not run;
//   - /init closes every connection accepted before the last prepare, but
//     never the connection carrying the /init request itself.
package envd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
)

// Build information, set with -ldflags by the Makefile.
var (
	Version = "dev"
	Commit  = "unknown"
)

// DefaultPort is the port envd listens on inside a capsule.
const DefaultPort = 49983

// Config configures an envd server. Zero values take the documented defaults.
type Config struct {
	Logger *slog.Logger
	// DefaultUser is the user requests act as when they name none ("" = envd's own user).
	DefaultUser string
	// RunDir receives .WRENN_TEMPLATE_ID and .WRENN_CAPSULE_ID (default /run/wrenn).
	RunDir string
	// PrepareTimeout re-enables keep-alives and the reclaimer when no /init
	// follows a /snapshot/prepare (default 60 s).
	PrepareTimeout time.Duration
	// Reclaim configures the page-cache reclaimer.
	Reclaim ReclaimConfig
	// Metrics configures where /metrics reads the system state from.
	Metrics MetricsConfig
	// SetClock sets the system clock; default uses clock_settime(CLOCK_REALTIME).
	SetClock func(time.Time) error
}

func (c *Config) fill() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RunDir == "" {
		c.RunDir = "/run/wrenn"
	}
	if c.PrepareTimeout == 0 {
		c.PrepareTimeout = 60 * time.Second
	}
	if c.SetClock == nil {
		c.SetClock = setSystemClock
	}
	c.Reclaim.fill()
	c.Metrics.fill()
}

// Server is one envd instance.
type Server struct {
	cfg      Config
	log      *slog.Logger
	defaults *defaults.Defaults
	conns    *connTracker
	token    *tokenGate
	reclaim  *reclaimer
	metrics  *metricsReader
	mux      *http.ServeMux
	closers  []func()
	// background tasks run for the lifetime of Serve.
	background []backgroundTask

	httpMu  sync.Mutex
	httpSrv *http.Server

	prepMu       sync.Mutex
	prepared     bool
	prepTimer    *time.Timer
	prepEpoch    uint64
	shutdownOnce sync.Once
}

// New builds a server. It starts no goroutines until Serve.
func New(cfg Config) (*Server, error) {
	cfg.fill()
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		defaults: defaults.New(cfg.DefaultUser),
		conns:    newConnTracker(),
		token:    &tokenGate{},
		metrics:  newMetricsReader(cfg.Metrics),
	}
	s.reclaim = newReclaimer(cfg.Reclaim, cfg.Logger)
	s.mux = http.NewServeMux()
	s.routes()
	if err := s.mountServices(); err != nil {
		return nil, err
	}
	return s, nil
}

// Defaults exposes the shared defaults (tests and the services use it).
func (s *Server) Defaults() *defaults.Defaults { return s.defaults }

// Handler returns the full HTTP handler, including the access-token gate.
func (s *Server) Handler() http.Handler {
	return s.token.middleware(s.mux)
}

// Serve serves on ln until ctx is cancelled, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       620 * time.Second,
		MaxHeaderBytes:    64 << 10,
		Protocols:         &protocols,
		ConnState:         s.conns.onState,
		ConnContext:       s.conns.connContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.httpMu.Lock()
	s.httpSrv = srv
	s.httpMu.Unlock()

	bg, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.reclaim.run(bg) })
	wg.Go(func() { s.metrics.run(bg) })
	for _, task := range s.background {
		wg.Go(func() { task(bg) })
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
		shCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = srv.Shutdown(shCtx)
		cancel()
		<-errc
	case err = <-errc:
	}
	stop()
	wg.Wait()
	s.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close releases the services (kills started processes, stops watchers).
func (s *Server) Close() {
	s.shutdownOnce.Do(func() {
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i]()
		}
		s.prepMu.Lock()
		if s.prepTimer != nil {
			s.prepTimer.Stop()
		}
		s.prepMu.Unlock()
	})
}

func (s *Server) server() *http.Server {
	s.httpMu.Lock()
	defer s.httpMu.Unlock()
	return s.httpSrv
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /health", s.handleHealth)
	s.mux.HandleFunc("GET /version", s.handleVersion)
	s.mux.HandleFunc("GET /metrics", s.handleMetrics)
	s.mux.HandleFunc("GET /envs", s.handleEnvs)
	s.mux.HandleFunc("POST /init", s.handleInit)
	s.mux.HandleFunc("POST /snapshot/prepare", s.handlePrepare)
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(`{"status":"ok"}`))
}

func (s *Server) handleVersion(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": Version, "commit": Commit})
}

func (s *Server) handleEnvs(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.defaults.Envs())
}

// ListenAddr formats the listen address for a port on all interfaces.
func ListenAddr(port int) string { return fmt.Sprintf(":%d", port) }
