package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/email"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// serverFlags are the flags of `wrenn server`.
type serverFlags struct {
	listen             string
	db                 string
	secretFile         string
	publicURL          string
	proxyListen        string
	proxyDomain        string
	githubClientID     string
	githubSecretFile   string
	githubAuthorizeURL string
	githubTokenURL     string
	githubAPIURL       string
	agentCA            string
	agentClientCert    string
	agentClientKey     string
	sessionTTL         time.Duration
	heartbeatInterval  time.Duration
	reconcileInterval  time.Duration
	buildStaleAfter    time.Duration
	disableSignup      bool
	secureCookies      bool
	wsOrigins          []string
	logLevel           string
	smtpHost           string
	smtpPort           int
	smtpUser           string
	smtpPasswordFile   string
	smtpFrom           string
	smtpTLS            string
	replicaID          string
	adminKeyFile       string
	noMetricsFlush     bool
	noBuildRunner      bool
	capsuleInternet    string
	defaultIsolation   string
	pausedRetention    time.Duration
	// events and webhooks (docs/EVENTS.md)
	eventRetention      time.Duration
	webhookAllowPrivate bool
}

// newServerCmd returns `wrenn server`: the control plane.
func newServerCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: the HTTP API, scheduler, reconciler and port proxy",
		Long: `Run the control plane. It serves the REST and WebSocket API on --listen,
keeps its state in --db (an embedded SQLite file, or PostgreSQL when --db is
a postgres:// URL so several replicas can share it), places capsules on
registered hosts and proxies capsule ports on its own listener,
--proxy-listen, at /proxy/{id}/{port}/ (and at {port}-{id}.<proxy-domain>
when --proxy-domain is set): capsule content never shares the API's origin,
and the proxy strips Wrenn's credentials before a request reaches a capsule.

The secret in --jwt-secret-file signs sessions and derives host
credentials; every replica needs the same file. It is created (0600) when
missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	home := os.Getenv("WRENN_HOME")
	if home == "" {
		home = "/var/lib/wrenn"
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:9725", "address to serve the API on")
	fl.StringVar(&f.db, "db", filepath.Join(home, "wrenn.db"), "SQLite file, or PostgreSQL URL (postgres://…)")
	fl.StringVar(&f.secretFile, "jwt-secret-file", filepath.Join(home, "server.secret"), "file holding the server secret (created when missing)")
	fl.StringVar(&f.smtpHost, "smtp-host", "", "SMTP server for verification and password-reset mail (default: write the links to the log)")
	fl.IntVar(&f.smtpPort, "smtp-port", 587, "SMTP port")
	fl.StringVar(&f.smtpUser, "smtp-user", "", "SMTP user name")
	fl.StringVar(&f.smtpPasswordFile, "smtp-password-file", "", "file holding the SMTP password")
	fl.StringVar(&f.smtpFrom, "smtp-from", "", "sender address, e.g. \"Wrenn <noreply@example.com>\"")
	fl.StringVar(&f.smtpTLS, "smtp-tls", "starttls", "starttls, require-starttls, tls (implicit, port 465) or none")
	fl.BoolVar(&f.noBuildRunner, "no-build-runner", false, "do not run queued template builds on this replica")
	fl.BoolVar(&f.noMetricsFlush, "no-metrics-flush", false, "do not copy agents' samples into usage metrics on this replica (replicas already take turns through a lease)")
	fl.StringVar(&f.adminKeyFile, "admin-key-file", "", "first start: create a platform admin ("+controlplane.AdminEmail+") and write its API key here (0600); later starts check the key; empty: no bootstrap")
	fl.StringVar(&f.replicaID, "replica-id", "", "this replica's name in the leases that run background jobs on one replica at a time (default: host name and a random suffix)")
	fl.StringVar(&f.publicURL, "public-url", "", "URL browsers use to reach Wrenn (OAuth redirects), e.g. https://wrenn.example")
	fl.StringVar(&f.proxyListen, "proxy-listen", controlplane.DefaultProxyListen, "address to serve the port proxy on (capsule ports, never on the API's address)")
	fl.StringVar(&f.proxyDomain, "proxy-domain", "", "also serve capsule ports at {port}-{capsule}.<domain> on --proxy-listen")
	fl.StringVar(&f.githubClientID, "github-client-id", "", "GitHub OAuth app client id (enables GitHub sign-in)")
	fl.StringVar(&f.githubSecretFile, "github-client-secret-file", "", "file holding the GitHub OAuth app client secret")
	fl.StringVar(&f.githubAuthorizeURL, "github-authorize-url", "", "GitHub authorize endpoint (default github.com)")
	fl.StringVar(&f.githubTokenURL, "github-token-url", "", "GitHub token endpoint (default github.com)")
	fl.StringVar(&f.githubAPIURL, "github-api-url", "", "GitHub API base (default https://api.github.com)")
	fl.StringVar(&f.agentCA, "agent-ca", "", "CA (PEM) that signs host agents' certificates (https agents)")
	fl.StringVar(&f.agentClientCert, "agent-client-cert", "", "client certificate (PEM) presented to agents (mutual TLS)")
	fl.StringVar(&f.agentClientKey, "agent-client-key", "", "key of --agent-client-cert")
	fl.DurationVar(&f.sessionTTL, "session-ttl", 24*time.Hour, "lifetime of session tokens")
	fl.DurationVar(&f.heartbeatInterval, "heartbeat-interval", 30*time.Second, "host heartbeat interval; three missed beats make a host unavailable")
	fl.DurationVar(&f.reconcileInterval, "reconcile-interval", 30*time.Second, "how often the store is aligned with the agents")
	fl.DurationVar(&f.buildStaleAfter, "build-stale-after", builds.DefaultStaleAfter, "a running template build whose replica has not said it is alive for this long is failed as interrupted (replicas say so every quarter of it)")
	fl.BoolVar(&f.disableSignup, "disable-signup", false, "refuse new sign-ups")
	fl.BoolVar(&f.secureCookies, "secure-cookies", false, "mark cookies Secure (serve over HTTPS)")
	fl.StringSliceVar(&f.wsOrigins, "ws-origin", nil, "extra origin allowed to open WebSockets (repeatable)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.capsuleInternet, "capsule-internet", "on", "on, or off: no capsule gets outbound internet (a request for it is refused; overrides team defaults)")
	fl.StringVar(&f.defaultIsolation, "default-isolation", runtime.IsolationContainer, defaultIsolationUsage)
	fl.DurationVar(&f.pausedRetention, "paused-retention", capsules.DefaultPausedRetention, "how long a capsule paused by its on_timeout is kept before it is deleted with its snapshots (explicit pauses are kept)")
	fl.DurationVar(&f.eventRetention, "event-retention", events.DefaultRetention, "how long the event log keeps events (GET /v1/events)")
	fl.BoolVar(&f.webhookAllowPrivate, "webhook-allow-private", false, "let webhook URLs point at loopback, link-local, private addresses and this host")
	return cmd
}

// loadOrCreateSecret reads a secret file, creating it with 64 random
// bytes (hex, mode 0600) when it does not exist.
func loadOrCreateSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("secret dir: %w", err)
		}
		var raw [64]byte
		_, _ = rand.Read(raw[:])
		secret := fmt.Sprintf("%x\n", raw[:])
		if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
			return nil, fmt.Errorf("write secret: %w", err)
		}
		b = []byte(secret)
	} else if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 32 {
		return nil, fmt.Errorf("secret in %s is shorter than 32 bytes", path)
	}
	return []byte(s), nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level: %w", err)
	}
	return l, nil
}

// serverConfig turns the flags into a controlplane.Config.
func serverConfig(f serverFlags, stderr io.Writer) (controlplane.Config, error) {
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return controlplane.Config{}, err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if !controlplane.IsPostgresDSN(f.db) {
		if err := os.MkdirAll(filepath.Dir(f.db), 0o700); err != nil {
			return controlplane.Config{}, fmt.Errorf("database dir: %w", err)
		}
	}
	secret, err := loadOrCreateSecret(f.secretFile)
	if err != nil {
		return controlplane.Config{}, err
	}
	cfg := controlplane.Config{
		Listen: f.listen, DB: f.db, Secret: secret, SessionTTL: f.sessionTTL, PublicURL: f.publicURL,
		ProxyListen: f.proxyListen, ProxyDomain: f.proxyDomain, AgentCA: f.agentCA, AgentClientCert: f.agentClientCert, AgentClientKey: f.agentClientKey,
		HeartbeatInterval: f.heartbeatInterval, ReconcileInterval: f.reconcileInterval, BuildStaleAfter: f.buildStaleAfter,
		DisableSignup: f.disableSignup, SecureCookies: f.secureCookies, WSOriginPatterns: f.wsOrigins, Logger: log,
		DisableMetricsFlush: f.noMetricsFlush, ReplicaID: f.replicaID,
		DisableBuildRunner: f.noBuildRunner,
		DefaultIsolation:   f.defaultIsolation,
		PausedRetention:    f.pausedRetention,
		EventRetention:     f.eventRetention, WebhookAllowPrivate: f.webhookAllowPrivate,
	}
	if f.defaultIsolation == "" {
		f.defaultIsolation = runtime.IsolationContainer
		cfg.DefaultIsolation = f.defaultIsolation
	}
	if !runtime.ValidIsolation(f.defaultIsolation) {
		return controlplane.Config{}, fmt.Errorf("--default-isolation %q: want one of %s", f.defaultIsolation, strings.Join(runtime.KnownIsolations, ", "))
	}
	switch f.capsuleInternet {
	case "on":
	case "off":
		cfg.CapsuleInternetOff = true
	default:
		return controlplane.Config{}, fmt.Errorf("--capsule-internet %q: want on or off", f.capsuleInternet)
	}
	if f.smtpHost != "" {
		var password string
		if f.smtpPasswordFile != "" {
			b, err := os.ReadFile(f.smtpPasswordFile)
			if err != nil {
				return controlplane.Config{}, fmt.Errorf("smtp password: %w", err)
			}
			password = strings.TrimSpace(string(b))
		}
		m, err := email.NewSMTP(email.SMTPConfig{
			Host: f.smtpHost, Port: f.smtpPort, Username: f.smtpUser, Password: password, From: f.smtpFrom, TLS: f.smtpTLS,
		})
		if err != nil {
			return controlplane.Config{}, err
		}
		cfg.Mailer = m
	}
	if f.githubClientID != "" {
		if f.githubSecretFile == "" {
			return controlplane.Config{}, errors.New("--github-client-id needs --github-client-secret-file")
		}
		b, err := os.ReadFile(f.githubSecretFile)
		if err != nil {
			return controlplane.Config{}, fmt.Errorf("github client secret: %w", err)
		}
		cfg.GitHub = auth.GitHubConfig{
			ClientID: f.githubClientID, ClientSecret: strings.TrimSpace(string(b)),
			AuthorizeURL: f.githubAuthorizeURL, TokenURL: f.githubTokenURL,
		}
		if api := strings.TrimSuffix(f.githubAPIURL, "/"); api != "" {
			cfg.GitHub.UserURL, cfg.GitHub.EmailsURL = api+"/user", api+"/user/emails"
		}
	}
	return cfg, nil
}

func runServer(ctx context.Context, f serverFlags, stderr io.Writer) error {
	cfg, err := serverConfig(f, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := controlplane.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	if f.adminKeyFile != "" {
		_, created, err := controlplane.BootstrapAdmin(ctx, srv.Store(), f.adminKeyFile)
		if err != nil {
			return fmt.Errorf("--admin-key-file: %w", err)
		}
		if created {
			_, _ = fmt.Fprintf(stderr, "Created platform admin %s; its API key is in %s\n", controlplane.AdminEmail, f.adminKeyFile)
		}
	}
	return srv.Run(ctx)
}

// defaultIsolationUsage is the help of --default-isolation (wrenn server
// and wrenn up).
const defaultIsolationUsage = "isolation of a capsule whose create, template and team name none: container, gvisor or microvm (hosts must run it: see their capabilities)"
