// Package agents owns the control plane's connections to host agents: one
// HTTP/1.1 transport pool (separate from the port proxy's) and a Connect
// client per host, authenticated with the host's credential.
//
// Invariants:
//   - HTTP/2 is off; ResponseHeaderTimeout is long (default 5 min) because
//     create/pause/resume/snapshot answer only when done; there is no
//     client-wide timeout, callers pass deadlines in contexts.
//   - The credential sent to host H is auth.HostCredential(key, H): the
//     same secret H presents to the control plane, recomputable by every
//     replica, never stored in clear.
package agents

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Config configures a Pool.
type Config struct {
	// Key derives host credentials (auth.HostCredential). Required.
	Key []byte
	// TLS, when set, is used for https:// agent addresses (mutual TLS when
	// it carries a client certificate).
	TLS *tls.Config
	// ResponseHeaderTimeout default 5 min.
	ResponseHeaderTimeout time.Duration
	// DialTimeout default 5 s.
	DialTimeout time.Duration
}

// Pool hands out clients for hosts.
type Pool struct {
	cfg       Config
	transport *http.Transport
	// files is transport with 1 MiB socket buffers, for bulk bytes (file
	// uploads and downloads through the agents' envd route).
	files *http.Transport

	mu      sync.Mutex
	clients map[string]entry
	local   map[string]http.Handler // agents in this process, by address (SetLocal)
}

type entry struct {
	addr   string
	client hostagentv1connect.HostAgentServiceClient
}

// NewTransport returns an HTTP/1.1-only transport with the given
// response-header timeout and TLS config.
func NewTransport(tc *tls.Config, responseHeaderTimeout, dialTimeout time.Duration) *http.Transport {
	var protos http.Protocols
	protos.SetHTTP1(true)
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	var tlsCfg *tls.Config
	if tc != nil {
		tlsCfg = tc.Clone()
		tlsCfg.NextProtos = []string{"http/1.1"}
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		TLSClientConfig:       tlsCfg,
		Protocols:             &protos,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		// No transparent gzip: agents answer over the data-center network
		// or loopback, where compressing file and output streams costs
		// more CPU than it saves (docs/PERFORMANCE.md).
		DisableCompression: true,
	}
}

// New returns a pool.
func New(cfg Config) *Pool {
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 5 * time.Minute
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	files := NewTransport(cfg.TLS, cfg.ResponseHeaderTimeout, cfg.DialTimeout)
	files.WriteBufferSize, files.ReadBufferSize = 1<<20, 1<<20
	return &Pool{
		cfg:       cfg,
		transport: NewTransport(cfg.TLS, cfg.ResponseHeaderTimeout, cfg.DialTimeout),
		files:     files,
		clients:   map[string]entry{},
		local:     map[string]http.Handler{},
	}
}

// SetLocal makes the Connect clients of hosts at address call h, an
// agent's handler in this process (`wrenn up`), through a LocalTransport
// instead of a socket. The host credential is still sent and checked.
// Transport (plain HTTP calls such as the envd route) is not affected.
func (p *Pool) SetLocal(address string, h http.Handler) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.local[address] = h
	for id, e := range p.clients {
		if e.addr == address {
			delete(p.clients, id)
		}
	}
}

// BaseURL is the agent's base URL for a host address ("host:port" gets
// http:// or, with TLS configured, https://).
func (p *Pool) BaseURL(address string) string {
	if strings.Contains(address, "://") {
		return strings.TrimSuffix(address, "/")
	}
	if p.cfg.TLS != nil {
		return "https://" + address
	}
	return "http://" + address
}

// Credential returns the secret for hostID.
func (p *Pool) Credential(hostID string) string { return auth.HostCredential(p.cfg.Key, hostID) }

// Client returns the RPC client for h, rebuilt when its address changed.
func (p *Pool) Client(h store.Host) hostagentv1connect.HostAgentServiceClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.clients[h.ID]; ok && e.addr == h.Address {
		return e.client
	}
	var base http.RoundTripper = p.transport
	if lh, ok := p.local[h.Address]; ok {
		base = LocalTransport{Handler: lh}
	}
	hc := &http.Client{Transport: bearer{base: base, secret: p.Credential(h.ID)}}
	// Uncompressed answers: gzip of file downloads and output streams was
	// 14 % of `wrenn up`'s CPU under `wrenn bench` (docs/PERFORMANCE.md).
	// Output chunks of streams are decoded into pooled buffers
	// (outputCodec; consumers hand them back with ReleaseOutput).
	c := hostagentv1connect.NewHostAgentServiceClient(hc, p.BaseURL(h.Address), connect.WithAcceptCompression("gzip", nil, nil), connect.WithCodec(outputCodec{}))
	p.clients[h.ID] = entry{addr: h.Address, client: c}
	return c
}

// Local returns the in-process handler of the agent at address (SetLocal),
// or nil: callers that can serve a request through it skip the loopback
// TCP hop (the files API's downloads and uploads).
func (p *Pool) Local(address string) http.Handler {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.local[address]
}

// Forget drops a host's client (host deleted).
func (p *Pool) Forget(hostID string) {
	p.mu.Lock()
	delete(p.clients, hostID)
	p.mu.Unlock()
}

// Transport is the pool's HTTP transport (for plain HTTP calls to agents,
// e.g. the E2B envd route; add the host credential yourself).
func (p *Pool) Transport() http.RoundTripper { return p.transport }

// FileTransport is the transport for bulk transfers to agents (file
// uploads and downloads): the pool's settings with 1 MiB read and write
// buffers, in its own connection pool so that a long transfer never holds
// a connection an RPC would reuse. Add the host credential yourself.
func (p *Pool) FileTransport() http.RoundTripper { return p.files }

// Close closes idle connections.
func (p *Pool) Close() {
	p.transport.CloseIdleConnections()
	p.files.CloseIdleConnections()
}

type bearer struct {
	base   http.RoundTripper
	secret string
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.secret)
	return b.base.RoundTrip(r)
}
