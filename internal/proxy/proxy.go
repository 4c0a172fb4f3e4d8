// Package proxy is the control plane's port proxy: it exposes ports inside
// capsules at /proxy/{capsule}/{port}/… and at {port}-{capsule}.{domain},
// forwarding to the capsule proxy of the host agent that runs the capsule.
// It is served on its own listener (Handler), never on the API's origin, so
// capsule content cannot read or set the API's cookies or call the API as
// the browser's user.
//
// Invariants:
//   - Wrenn credentials never reach capsule code: credstrip.Request removes
//     the API-key header, bearer Wrenn tokens and session JWTs, Wrenn's
//     cookies, the access token (header and query) and every X-Wrenn-
//     header before the proxy sets its own (host secret, prefix).
//   - No existence oracle: an unknown capsule, a private capsule asked
//     without a valid token, and envd's port (49983, reached only through
//     the API) get the same answer (notFound), after the same store work
//     (the host is located only once access is granted).
//   - Its own HTTP/1.1 transport (HTTP/2 off), separate from the RPC pool;
//     WebSocket upgrades pass through.
//   - The path after the port is forwarded byte for byte (string
//     concatenation, never path.Join): a trailing slash stays.
//   - The agent is asked for capsule-root-relative Location headers (empty
//     prefix); this proxy then adds /proxy/{id}/{port} for the path form and
//     leaves them root-relative for the subdomain form. Absolute Locations
//     that point at the agent or at the public host are rewritten the same
//     way.
//   - A capsule that is not public needs its access token (header
//     X-Wrenn-Access-Token or query wrenn_access_token); client
//     X-Forwarded-* headers are replaced.
//   - Reverse proxies are cached per capsule+port+host+agent URL (a moved
//     capsule gets a new one) and evicted when a capsule is destroyed or
//     moved by this replica.
package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/credstrip"
	"github.com/wrenn-dev/wrenn/internal/relay"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Header and query names.
const (
	AccessTokenHeader = "X-Wrenn-Access-Token"
	AccessTokenParam  = credstrip.AccessTokenParam
	// Agent-side names (see internal/hostagent).
	hostSecretHeader = "X-Wrenn-Host-Secret"
	prefixHeader     = "X-Wrenn-Proxy-Prefix"
)

// Target is where a capsule's ports are reached.
type Target struct {
	// AgentURL is the agent's base URL, e.g. http://10.0.0.5:50051.
	AgentURL string
	// HostSecret authenticates to the agent.
	HostSecret string
	Public     bool
	// AccessTokenHash is the SHA-256 hex of the capsule's access token.
	AccessTokenHash string
	Running         bool
	// Locate, when set, returns the target with AgentURL, HostSecret and
	// Running filled in. It is called only after access was granted, so a
	// request without a valid token costs the same store work as one for
	// an unknown capsule.
	Locate func(ctx context.Context) (Target, error)
}

// ErrNotFound is what a Resolver returns for an unknown capsule.
var ErrNotFound = errors.New("capsule not found")

// ErrResumeFailed is what Locate wraps when a paused capsule with
// auto_resume could not be resumed (503 capsule_resume_failed).
var ErrResumeFailed = errors.New("capsule could not be resumed")

// Resolver finds a capsule's target.
type Resolver func(ctx context.Context, capsuleID string) (Target, error)

// Config configures a Proxy.
type Config struct {
	Resolve Resolver
	// Domain enables host-based routing: {port}-{capsule}.{Domain}.
	Domain string
	// TLS for https agent URLs (mutual TLS with a client certificate).
	TLS    *tls.Config
	Logger *slog.Logger
}

// Proxy is an http.Handler for the path form; Wrap adds the subdomain form.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	transport *http.Transport
	cache     sync.Map // key -> *httputil.ReverseProxy
}

type key struct {
	capsule string
	port    int
	host    string
	// agent is the agent URL the proxy targets: a capsule that moved to
	// another host (possibly by another replica, which evicts only its own
	// cache) gets a new proxy, never the old host's with the new host's
	// secret.
	agent string
}

// New returns a proxy.
func New(cfg Config) *Proxy {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	var tc *tls.Config
	if cfg.TLS != nil {
		tc = cfg.TLS.Clone()
		tc.NextProtos = []string{"http/1.1"}
	}
	return &Proxy{cfg: cfg, log: cfg.Logger, transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       tc,
		Protocols:             &protos,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}}
}

// Close closes idle connections.
func (p *Proxy) Close() { p.transport.CloseIdleConnections() }

// Evict drops cached proxies of a capsule.
func (p *Proxy) Evict(capsuleID string) {
	p.cache.Range(func(k, _ any) bool {
		if k.(key).capsule == capsuleID {
			p.cache.Delete(k)
		}
		return true
	})
}

// Cached reports how many reverse proxies are cached.
func (p *Proxy) Cached() int {
	n := 0
	p.cache.Range(func(_, _ any) bool { n++; return true })
	return n
}

// ParsePath splits /proxy/{capsule}/{port}{rest} (escaped path). rest is
// "/" when nothing follows the port.
func ParsePath(escaped string) (capsule string, port int, rest string, ok bool) {
	s, found := strings.CutPrefix(escaped, "/proxy/")
	if !found {
		return "", 0, "", false
	}
	capsule, s, found = strings.Cut(s, "/")
	if !found || capsule == "" {
		return "", 0, "", false
	}
	portStr, tail, hasTail := strings.Cut(s, "/")
	if port, ok = parsePort(portStr); !ok {
		return "", 0, "", false
	}
	rest = "/"
	if hasTail {
		rest = "/" + tail
	}
	return capsule, port, rest, true
}

func parsePort(s string) (int, bool) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, false
	}
	return n, true
}

// ParseHost splits "{port}-{capsule}.{domain}[:port]".
func ParseHost(host, domain string) (capsule string, port int, ok bool) {
	if domain == "" {
		return "", 0, false
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, found := strings.CutSuffix(strings.ToLower(host), "."+strings.ToLower(domain))
	if !found || strings.Contains(label, ".") {
		return "", 0, false
	}
	portStr, capsule, found := strings.Cut(label, "-")
	if !found || capsule == "" {
		return "", 0, false
	}
	if port, ok = parsePort(portStr); !ok {
		return "", 0, false
	}
	return capsule, port, true
}

// Handler is the handler of the proxy's own listener: the subdomain form
// for hosts under Domain, the path form for /proxy/…, and notFound for
// anything else.
func (p *Proxy) Handler() http.Handler { return p.Wrap(p) }

// ServeHTTP serves the path form.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	capsule, port, rest, ok := ParsePath(r.URL.EscapedPath())
	if !ok {
		if !strings.HasPrefix(r.URL.EscapedPath(), "/proxy/") {
			notFound(w)
			return
		}
		writeError(w, http.StatusBadRequest, "invalid_argument", "want /proxy/{capsule}/{port}/…")
		return
	}
	p.serve(w, r, capsule, port, rest, "/proxy/"+capsule+"/"+strconv.Itoa(port))
}

// Wrap serves {port}-{capsule}.{domain} requests and passes the others to
// next.
func (p *Proxy) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		capsule, port, ok := ParseHost(r.Host, p.cfg.Domain)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		rest := r.URL.EscapedPath()
		if rest == "" {
			rest = "/"
		}
		p.serve(w, r, capsule, port, rest, "")
	})
}

type prefixCtx struct{}

// notFoundMessage is the one answer for an unknown capsule, a private
// capsule without a valid token, and a refused port.
const notFoundMessage = "no such capsule port, or the capsule is private and the access token " +
	"(X-Wrenn-Access-Token header or wrenn_access_token query parameter) is missing or wrong"

// noSuchHash stands in for an unknown capsule's token hash, so the token
// check costs the same whether or not the capsule exists.
var noSuchHash = auth.HashToken("no such capsule")

// writeError writes the API's error shape, {"code","message"}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(map[string]string{"code": code, "message": msg})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func notFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "not_found", notFoundMessage)
}

func unavailable(w http.ResponseWriter, status int) {
	writeError(w, status, "unavailable", "the capsule's host is not reachable right now; please try again in a moment")
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, capsule string, port int, rest, prefix string) {
	t, err := p.cfg.Resolve(r.Context(), capsule)
	if err != nil && !errors.Is(err, ErrNotFound) {
		p.log.WarnContext(r.Context(), "port proxy: resolve failed", "capsule_id", capsule, "err", err)
		unavailable(w, http.StatusServiceUnavailable)
		return
	}
	found := err == nil
	q := r.URL.Query()
	tok := r.Header.Get(AccessTokenHeader)
	if tok == "" {
		tok = q.Get(AccessTokenParam)
	}
	want := t.AccessTokenHash
	if !found {
		want = noSuchHash
	}
	tokenOK := tok != "" && auth.EqualHash(auth.HashToken(tok), want)
	// envd is reached through the API only; its port is refused like an
	// unknown target.
	if !found || (!t.Public && !tokenOK) || port == runtime.EnvdPort {
		notFound(w)
		return
	}
	if t.Locate != nil {
		if t, err = t.Locate(r.Context()); err != nil {
			p.log.WarnContext(r.Context(), "port proxy: locate failed", "capsule_id", capsule, "err", err)
			if errors.Is(err, ErrResumeFailed) {
				writeError(w, http.StatusServiceUnavailable, "capsule_resume_failed", "the capsule could not be resumed; please try again")
				return
			}
			unavailable(w, http.StatusServiceUnavailable)
			return
		}
	}
	if !t.Running {
		writeError(w, http.StatusConflict, "conflict", "the capsule is not running")
		return
	}
	k := key{capsule: capsule, port: port, host: r.Host, agent: t.AgentURL}
	v, ok := p.cache.Load(k)
	if !ok {
		rp, err := p.newReverseProxy(t.AgentURL)
		if err != nil {
			p.log.WarnContext(r.Context(), "port proxy: bad agent url", "capsule_id", capsule, "err", err)
			unavailable(w, http.StatusServiceUnavailable)
			return
		}
		v, _ = p.cache.LoadOrStore(k, rp)
	}
	out := r.Clone(context.WithValue(r.Context(), prefixCtx{}, prefix))
	agentPath := "/proxy/" + capsule + "/" + strconv.Itoa(port) + rest
	u, err := url.Parse(agentPath)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", "bad path")
		return
	}
	out.URL.Path, out.URL.RawPath = u.Path, u.RawPath
	credstrip.Request(out)
	out.Header.Set(hostSecretHeader, t.HostSecret)
	out.Header.Set(prefixHeader, "")
	// Full duplex: see internal/relay (a streamed answer cut when it
	// starts while the Transport still reads the request body).
	relay.FullDuplex(v.(*httputil.ReverseProxy), p.log).ServeHTTP(w, out)
}

func (p *Proxy) newReverseProxy(agentURL string) (*httputil.ReverseProxy, error) {
	target, err := url.Parse(agentURL)
	if err != nil || target.Host == "" {
		return nil, errors.New("invalid agent URL")
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, pr.In.URL.RawPath
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     p.transport,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			prefix, _ := resp.Request.Context().Value(prefixCtx{}).(string)
			if loc := resp.Header.Get("Location"); loc != "" {
				resp.Header.Set("Location", RewriteLocation(loc, prefix, target.Host, resp.Request.Host))
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				p.log.WarnContext(r.Context(), "port proxy: agent error", "agent", target.Host, "err", err)
			}
			unavailable(w, http.StatusBadGateway)
		},
	}, nil
}

// RewriteLocation maps a Location that points into the capsule under
// prefix ("" for the subdomain form). Root-relative paths and absolute
// URLs to the agent or to the public host become prefix+path; other
// absolute URLs and relative paths are left alone. A Location already
// under prefix is left as is.
func RewriteLocation(loc, prefix, agentHost, publicHost string) string {
	if strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") {
		if prefix != "" && (loc == prefix || strings.HasPrefix(loc, prefix+"/")) {
			return loc
		}
		return prefix + loc
	}
	u, err := url.Parse(loc)
	if err != nil || !u.IsAbs() || (u.Host != agentHost && u.Host != publicHost) {
		return loc
	}
	rest := u.EscapedPath()
	if rest == "" {
		rest = "/"
	}
	if u.RawQuery != "" {
		rest += "?" + u.RawQuery
	}
	if u.Fragment != "" {
		rest += "#" + u.EscapedFragment()
	}
	if prefix != "" && (rest == prefix || strings.HasPrefix(rest, prefix+"/")) {
		return rest
	}
	return prefix + rest
}
