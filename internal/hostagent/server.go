package hostagent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// SecretHeader is an alternative to "Authorization: Bearer" for the host
// secret, used on /proxy/ requests so the client's own Authorization header
// reaches the capsule untouched.
const SecretHeader = "X-Wrenn-Host-Secret"

// Handler returns the agent's HTTP handler: the Connect service, the port
// proxy at /proxy/, the control plane's envd route at /envd/ (both behind
// the host secret) and an unauthenticated GET /healthz.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	path, h := hostagentv1connect.NewHostAgentServiceHandler(service{a: a},
		connect.WithReadMaxBytes(maxUnaryFile+(1<<20)),
	)
	mux.Handle(path, a.auth(h))
	mux.Handle("/proxy/", a.auth(a.proxy))
	mux.Handle(EnvdRoutePrefix, a.auth(a.newEnvdRoute()))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	return mux
}

// auth checks the host secret in constant time (Authorization: Bearer or
// X-Wrenn-Host-Secret) and strips it before the request goes on.
func (a *Agent) auth(next http.Handler) http.Handler {
	if a.cfg.Secret == "" {
		return next
	}
	want := sha256.Sum256([]byte(a.cfg.Secret))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get(SecretHeader)
		fromAuthz := false
		if got == "" {
			if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
				got, fromAuthz = strings.TrimSpace(v), true
			}
		}
		sum := sha256.Sum256([]byte(got))
		if got == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"code":"unauthenticated","message":"missing or invalid host secret"}`))
			return
		}
		r.Header.Del(SecretHeader)
		if fromAuthz {
			r.Header.Del("Authorization")
		}
		next.ServeHTTP(w, r)
	})
}

// ServerConfig configures the agent's HTTP server.
type ServerConfig struct {
	// Addr to listen on (default ":50051"); ignored by Serve.
	Addr string
	// TLSCert and TLSKey enable TLS; ClientCA additionally requires and
	// verifies client certificates (mutual TLS).
	TLSCert, TLSKey, ClientCA string
	Logger                    *slog.Logger
}

// TLSConfig builds the server TLS config (nil when TLS is off).
func (c ServerConfig) TLSConfig() (*tls.Config, error) {
	if c.TLSCert == "" && c.TLSKey == "" {
		if c.ClientCA != "" {
			return nil, errors.New("hostagent: a client CA needs a server certificate and key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("hostagent: load TLS key pair: %w", err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("hostagent: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("hostagent: client CA: no certificates found")
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// NewServer returns the HTTP/1.1-only server for h.
func NewServer(h http.Handler, cfg ServerConfig) (*http.Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	return &http.Server{
		Addr:              cfg.Addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       620 * time.Second,
		MaxHeaderBytes:    1 << 20,
		Protocols:         &protocols,
		TLSConfig:         tc,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}, nil
}

// Serve serves the agent on ln until ctx ends, then shuts down gracefully
// (streams get up to 10 s to finish).
func (a *Agent) Serve(ctx context.Context, ln net.Listener, cfg ServerConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = a.log
	}
	srv, err := NewServer(a.Handler(), cfg)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = srv.Shutdown(sctx)
		cancel()
		if err != nil {
			_ = srv.Close()
		}
		<-errc
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
