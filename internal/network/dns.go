package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// forwarder is the agent's DNS forwarder. Every capsule gets a UDP and a
// TCP listener on port 53 of its own gateway address (the host end of its
// veth), so the listener a query arrives on says which capsule asked; the
// capsule's resolv.conf points there. A query is answered only if the
// capsule has egress and its policy allows the name; the answer comes from
// the upstream resolvers, and with a domain allow-list in force its A
// records are added, with their TTL, to the capsule's "resolved" nftables
// set before the answer is sent.
type forwarder struct {
	m        *Manager
	upstream []string
	log      *slog.Logger
	udp, tcp *dns.Client

	mu      sync.Mutex
	servers map[string][]*dns.Server
}

func newForwarder(m *Manager, upstream []string, log *slog.Logger) *forwarder {
	return &forwarder{
		m: m, upstream: upstream, log: log,
		udp:     &dns.Client{Net: "udp", Timeout: 3 * time.Second, UDPSize: dns.DefaultMsgSize},
		tcp:     &dns.Client{Net: "tcp", Timeout: 3 * time.Second},
		servers: map[string][]*dns.Server{},
	}
}

// upstreams normalizes configured resolvers, or reads the host's.
func upstreams(cfg []string) ([]string, error) {
	if len(cfg) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("network: dns upstream: read /etc/resolv.conf: %w (set --dns-upstream)", err)
		}
		for _, s := range cc.Servers {
			cfg = append(cfg, net.JoinHostPort(s, cc.Port))
		}
		if len(cfg) == 0 {
			return nil, errors.New("network: dns upstream: no nameserver in /etc/resolv.conf (set --dns-upstream)")
		}
		return cfg, nil
	}
	out := make([]string, 0, len(cfg))
	for _, s := range cfg {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("network: dns upstream %q: want an IP address or address:port", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// attach starts the capsule's listeners (idempotent).
func (f *forwarder) attach(a Allocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.servers[a.Key]; ok {
		return nil
	}
	addr := netip.AddrPortFrom(a.Host, 53).String()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("network: dns forwarder on %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("network: dns forwarder on %s: %w", addr, err)
	}
	key := a.Key
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { f.serve(key, w, r) })
	srvs := []*dns.Server{
		{PacketConn: pc, Handler: h},
		{Listener: ln, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
	}
	for _, s := range srvs {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				f.log.Warn("network: dns forwarder stopped", "capsule_key", key, "err", err)
			}
		}()
		<-started
	}
	f.servers[key] = srvs
	return nil
}

// detach stops the capsule's listeners.
func (f *forwarder) detach(key string) {
	f.mu.Lock()
	srvs := f.servers[key]
	delete(f.servers, key)
	f.mu.Unlock()
	for _, s := range srvs {
		_ = s.Shutdown()
	}
}

// close stops every capsule's listeners.
func (f *forwarder) close() {
	f.mu.Lock()
	keys := make([]string, 0, len(f.servers))
	for k := range f.servers {
		keys = append(keys, k)
	}
	f.mu.Unlock()
	for _, k := range keys {
		f.detach(k)
	}
}

func (f *forwarder) serve(key string, w dns.ResponseWriter, req *dns.Msg) {
	reply := func(rcode int) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		_ = w.WriteMsg(m)
	}
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		reply(dns.RcodeFormatError)
		return
	}
	st := f.m.policy(key)
	name := req.Question[0].Name
	if st == nil || !st.internet || st.held {
		f.denied(key, name, "allow_internet=false")
		reply(dns.RcodeRefused)
		return
	}
	if ok, rule := st.pol.NameAllowed(name); !ok {
		f.denied(key, name, rule)
		reply(dns.RcodeRefused)
		return
	}
	udp := w.LocalAddr().Network() == "udp"
	resp, err := f.exchange(req, udp)
	if err != nil {
		f.log.Warn("network: dns upstream failed", "capsule_key", key, "name", name, "err", err)
		reply(dns.RcodeServerFailure)
		return
	}
	if st.pol.DomainAllowList() {
		var addrs []netip.Addr
		var ttl uint32
		for _, rr := range resp.Answer {
			if a, ok := rr.(*dns.A); ok {
				if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
					addrs = append(addrs, ip)
					ttl = max(ttl, a.Hdr.Ttl)
				}
			}
		}
		if len(addrs) > 0 {
			if err := f.m.addResolved(key, addrs, time.Duration(ttl)*time.Second); err != nil {
				f.log.Warn("network: dns: add resolved addresses", "capsule_key", key, "name", name, "err", err)
				reply(dns.RcodeServerFailure)
				return
			}
		}
	}
	resp.Id = req.Id
	if udp {
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

func (f *forwarder) exchange(req *dns.Msg, udp bool) (*dns.Msg, error) {
	c := f.tcp
	if udp {
		c = f.udp
	}
	var errs []error
	for _, up := range f.upstream {
		resp, _, err := c.Exchange(req, up)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("no upstream resolver")
	}
	return nil, errors.Join(errs...)
}

func (f *forwarder) denied(key, name, rule string) {
	f.m.denied(key, strings.TrimSuffix(name, "."), rule, "dns")
}
