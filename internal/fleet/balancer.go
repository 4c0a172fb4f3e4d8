package fleet

import (
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// balancer is the fleet's load balancer: a reverse proxy that sends each
// request to the next replica in turn and, when a replica refuses the
// connection (it is down), to the one after it. It serves on several
// listeners (loopback for people and tests, each agent link's host address
// for the agents).
type balancer struct {
	targets []*url.URL
	proxies []*httputil.ReverseProxy
	next    atomic.Uint64
	mu      sync.Mutex
	lns     []net.Listener
	srv     *http.Server
}

func newBalancer(listen string, targets []string) (*balancer, error) {
	b := &balancer{}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	for _, t := range targets {
		u := &url.URL{Scheme: "http", Host: t}
		p := httputil.NewSingleHostReverseProxy(u)
		p.Transport = tr
		p.FlushInterval = -1 // streams (SSE, NDJSON logs) flow at once
		b.targets, b.proxies = append(b.targets, u), append(b.proxies, p)
	}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	if err := b.ListenAlso(listen); err != nil {
		return nil, err
	}
	return b, nil
}

// ServeHTTP picks replicas round-robin; a replica that refuses the
// connection is skipped for this request (bodies are buffered only when
// small enough to retry).
func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := b.next.Add(1)
	n := uint64(len(b.proxies))
	for i := range n {
		idx := (start + i) % n
		if i+1 < n && !b.up(idx) {
			continue
		}
		b.proxies[idx].ServeHTTP(w, r)
		return
	}
}

// up reports whether replica idx accepts connections.
func (b *balancer) up(idx uint64) bool {
	c, err := net.DialTimeout("tcp", b.targets[idx].Host, 500*time.Millisecond)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	_ = c.Close()
	return true
}

// ListenAlso serves on one more address.
func (b *balancer) ListenAlso(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.lns = append(b.lns, ln)
	b.mu.Unlock()
	go func() { _ = b.srv.Serve(ln) }()
	return nil
}

// Addr is the first listener's address.
func (b *balancer) Addr() string { return b.lns[0].Addr().String() }

// Port is the first listener's port.
func (b *balancer) Port() int { return b.lns[0].Addr().(*net.TCPAddr).Port }

// Close stops every listener.
func (b *balancer) Close() { _ = b.srv.Close() }
