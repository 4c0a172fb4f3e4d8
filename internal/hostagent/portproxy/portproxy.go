// Package portproxy is the host agent's reverse proxy to ports inside
// capsules: a request to /proxy/{capsule}/{port}/{rest} is forwarded to
// http://{capsule ip}:{port}/{rest}, WebSocket upgrades included.
//
// Invariants:
//   - Its own transport, never http.DefaultTransport; HTTP/2 is off (the
//     capsule side speaks HTTP/1.1, upgrades need it).
//   - A dial is tried 3 times with linear backoff (base, 2×base) before the
//     request fails with 502; a server that is still starting gets a chance.
//   - Reverse proxies are cached per capsule+port+host in a sync.Map and
//     evicted (with their idle connections) when the capsule goes away.
//   - The path after the port is forwarded byte for byte: a trailing slash
//     stays, nothing is cleaned with path.Join.
//   - Location headers that point at the capsule (root-relative, or
//     absolute to the upstream address) are rewritten under the prefix the
//     client used: the X-Wrenn-Proxy-Prefix request header when present
//     (the control plane sets it, "" for its subdomain form), otherwise
//     /proxy/{capsule}/{port}.
//   - Wrenn credentials never reach the capsule (credstrip.Request, after
//     the prefix header was read): the control plane strips them already;
//     this is the second line for any other caller holding the host
//     secret.
//   - envd's port (49983) is never forwarded: envd is reached through the
//     API. It gets the same answer as an unknown or stopped capsule
//     (notFound), which says nothing about what exists.
package portproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/credstrip"
	"github.com/wrenn-dev/wrenn/internal/relay"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// PrefixHeader names the prefix under which the client reached the proxy.
const PrefixHeader = "X-Wrenn-Proxy-Prefix"

// Resolver returns the address of a running capsule.
type Resolver func(ctx context.Context, capsuleID string) (netip.Addr, error)

// ErrNoCapsule is what a Resolver returns for an unknown or stopped capsule.
var ErrNoCapsule = errors.New("capsule not found or not running")

// Config configures a Proxy.
type Config struct {
	Resolve Resolver
	// DialAttempts (default 3) and DialBackoff (default 100 ms; attempt n
	// waits n×DialBackoff) govern dial retries.
	DialAttempts int
	DialBackoff  time.Duration
	// DialTimeout bounds one dial (default 5 s).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Proxy is the capsule port proxy; it is an http.Handler for /proxy/….
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
}

// New returns a proxy.
func New(cfg Config) *Proxy {
	if cfg.DialAttempts <= 0 {
		cfg.DialAttempts = 3
	}
	if cfg.DialBackoff <= 0 {
		cfg.DialBackoff = 100 * time.Millisecond
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger}
	p.transport = &http.Transport{
		Proxy:                 nil,
		DialContext:           p.dial,
		ForceAttemptHTTP2:     false,
		Protocols:             http1Only(),
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0,
		ExpectContinueTimeout: time.Second,
	}
	return p
}

func http1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}

// dial connects with retries and linear backoff.
func (p *Proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	var err error
	for attempt := 1; attempt <= p.cfg.DialAttempts; attempt++ {
		var c net.Conn
		c, err = d.DialContext(ctx, network, addr)
		if err == nil {
			return c, nil
		}
		if attempt == p.cfg.DialAttempts {
			break
		}
		t := time.NewTimer(time.Duration(attempt) * p.cfg.DialBackoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	return nil, fmt.Errorf("dial %s: %d attempts: %w", addr, p.cfg.DialAttempts, err)
}

// Evict drops the cached proxies of a capsule. Call it on destroy.
func (p *Proxy) Evict(capsuleID string) {
	p.cache.Range(func(k, _ any) bool {
		if k.(key).capsule == capsuleID {
			p.cache.Delete(k)
		}
		return true
	})
	p.transport.CloseIdleConnections()
}

// Cached returns how many reverse proxies the cache holds (for tests and
// diagnostics).
func (p *Proxy) Cached() int {
	n := 0
	p.cache.Range(func(_, _ any) bool { n++; return true })
	return n
}

// Close closes idle upstream connections.
func (p *Proxy) Close() { p.transport.CloseIdleConnections() }

// parse splits /proxy/{capsule}/{port}{rest} (on the escaped path).
func parse(escaped string) (capsule string, port int, rest string, ok bool) {
	s, found := strings.CutPrefix(escaped, "/proxy/")
	if !found {
		return "", 0, "", false
	}
	capsule, s, found = strings.Cut(s, "/")
	if !found || capsule == "" {
		return "", 0, "", false
	}
	portStr, tail, hasTail := strings.Cut(s, "/")
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, "", false
	}
	rest = "/"
	if hasTail {
		rest = "/" + tail
	}
	return capsule, port, rest, true
}

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

// notFound is the one answer for an unknown or stopped capsule and a
// refused port.
func notFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "not_found", "no such running capsule port")
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	capsule, port, rest, ok := parse(r.URL.EscapedPath())
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_argument", "want /proxy/{capsule}/{port}/…")
		return
	}
	if port == runtime.EnvdPort {
		notFound(w)
		return
	}
	ip, err := p.cfg.Resolve(r.Context(), capsule)
	if errors.Is(err, ErrNoCapsule) {
		notFound(w)
		return
	}
	if err != nil {
		p.log.Warn("port proxy: resolve failed", "capsule_id", capsule, "err", err)
		writeError(w, http.StatusBadGateway, "unavailable", "the capsule cannot be reached right now")
		return
	}
	prefix := "/proxy/" + capsule + "/" + strconv.Itoa(port)
	if v, present := r.Header[PrefixHeader]; present {
		prefix = strings.TrimSuffix(strings.Join(v, ""), "/")
	}
	k := key{capsule: capsule, port: port, host: r.Host}
	rp, ok := p.cache.Load(k)
	if !ok {
		var loaded bool
		rp, loaded = p.cache.LoadOrStore(k, p.newReverseProxy(netip.AddrPortFrom(ip, uint16(port)))) //nolint:gosec // port checked in parse
		// An Evict that ran between Resolve and the store would leave this
		// entry behind: check again that the capsule is still there.
		if _, err := p.cfg.Resolve(r.Context(), capsule); !loaded && err != nil {
			p.cache.Delete(k)
			notFound(w)
			return
		}
	}
	out := r.Clone(r.Context())
	u, err := url.Parse(rest)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", "bad path")
		return
	}
	out.URL.Path, out.URL.RawPath = u.Path, u.RawPath
	credstrip.Request(out) // drops PrefixHeader with every X-Wrenn- header
	out = out.WithContext(context.WithValue(out.Context(), prefixKey{}, prefix))
	// Full duplex: see internal/relay.
	relay.FullDuplex(rp.(*httputil.ReverseProxy), nil).ServeHTTP(w, out)
}

type prefixKey struct{}

func (p *Proxy) newReverseProxy(upstream netip.AddrPort) *httputil.ReverseProxy {
	target := &url.URL{Scheme: "http", Host: upstream.String()}
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
			prefix, _ := resp.Request.Context().Value(prefixKey{}).(string)
			if loc := resp.Header.Get("Location"); loc != "" {
				resp.Header.Set("Location", rewriteLocation(loc, prefix, upstream.String(), resp.Request.Host))
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				p.log.Debug("port proxy upstream error", "upstream", upstream.String(), "err", err)
			}
			writeError(w, http.StatusBadGateway, "unavailable", "capsule port unreachable: "+err.Error())
		},
	}
}

// rewriteLocation maps a Location that points into the capsule under prefix.
// Root-relative paths and absolute URLs to the upstream (or to the Host the
// request carried) become prefix+path; other absolute URLs and relative
// paths are left alone.
func rewriteLocation(loc, prefix, upstream, reqHost string) string {
	if strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") {
		return prefix + loc
	}
	u, err := url.Parse(loc)
	if err != nil || !u.IsAbs() {
		return loc
	}
	if u.Host != upstream && u.Host != reqHost {
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
	return prefix + rest
}
