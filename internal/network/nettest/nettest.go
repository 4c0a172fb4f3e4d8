// Package nettest builds a fake "internet" for network tests: a network
// namespace joined to the host by a veth pair, holding documentation-range
// addresses (198.51.100.0/24 and 203.0.113.0/24, RFC 5737) with an HTTP
// server and an authoritative DNS server (github.com/miekg/dns) for a few
// test names.
//
// Invariant: the host routes both ranges into the namespace before any
// server starts or any packet is sent, and Start checks with the kernel's
// own route lookup that every address it serves leaves through the test
// veth; if not, it fails the test before any traffic. So no test packet ever
// leaves the machine. Everything is removed on t.Cleanup, also when Start
// fails halfway. Names and the link addresses are unique per test process.
package nettest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// Ranges are the destination ranges the host routes into the namespace.
var Ranges = []netip.Prefix{
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
}

// Addresses served inside the namespace.
var (
	// Web1 and Web2 are two HTTP servers in one range; Web3 and Web4 in the other.
	Web1 = netip.MustParseAddr("198.51.100.10")
	Web2 = netip.MustParseAddr("198.51.100.20")
	Web3 = netip.MustParseAddr("203.0.113.10")
	Web4 = netip.MustParseAddr("203.0.113.20")
	// DNS is the authoritative server (UDP and TCP port 53).
	DNS = netip.MustParseAddr("198.51.100.53")
)

// Zone is the domain the DNS server answers for.
const Zone = "wrenn-test.example."

// DefaultNames maps the test names to their A records.
func DefaultNames() map[string][]netip.Addr {
	return map[string][]netip.Addr{
		"allowed." + Zone:   {Web1},
		"neighbour." + Zone: {Web2},
		"other." + Zone:     {Web3},
		"*.wild." + Zone:    {Web4},
		"multi." + Zone:     {Web1, Web3},
	}
}

// DiscardPort is a TCP port on Web1 that reads and discards (RFC 863), for
// throughput benchmarks.
const DiscardPort = 9

// ServeDiscard accepts on ln and discards what each connection sends,
// until ln is closed.
func ServeDiscard(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 1<<20)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	}
}

// TTL of every answer (seconds).
const TTL = 30

var seq atomic.Int32

// Internet is a running fake internet.
type Internet struct {
	// Netns is the path of the namespace (bind-mounted in /run/netns).
	Netns string
	// Veth is the host end of the link.
	Veth string
	// HostAddr is the host end's address (the source of masqueraded traffic).
	HostAddr netip.Addr

	mu      sync.Mutex
	names   map[string][]netip.Addr
	queries atomic.Int64
	bytesIn atomic.Int64
}

// Start builds the fake internet and registers its removal with t.Cleanup.
// It waits while another process's fake internet exists.
func Start(t testing.TB) *Internet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("nettest: needs root (call testutil.RequireRoot first)")
	}
	testutil.LockFakeInternet(t) // the documentation ranges are machine-wide
	n := int(seq.Add(1))
	pid := os.Getpid() % 100000
	name := fmt.Sprintf("wtinet%d-%d", pid, n)
	in := &Internet{
		Netns: "/run/netns/" + name,
		Veth:  fmt.Sprintf("wti%d%c", pid, 'a'+rune(n%26)),
		names: DefaultNames(),
	}
	// Link /30 inside 198.18.0.0/15 (RFC 2544 benchmarking), per process.
	block := (pid*4 + n) % (1 << 15)
	base := [4]byte{198, 18 + byte(block>>14), byte(block >> 6), byte(block<<2) & 0xfc}
	in.HostAddr = netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 1})
	peer := netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 2})
	t.Cleanup(in.remove)
	if err := in.build(name, peer); err != nil {
		t.Fatalf("nettest: %v", err)
	}
	if err := in.CheckRoutes(); err != nil {
		t.Fatalf("nettest: %v", err)
	}
	if err := in.serve(t); err != nil {
		t.Fatalf("nettest: %v", err)
	}
	return in
}

func (in *Internet) build(name string, peer netip.Addr) error {
	for _, r := range Ranges {
		if routes, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixNet(r)}, netlink.RT_FILTER_DST); len(routes) > 0 {
			return fmt.Errorf("a route for %s exists already (another fake internet?)", r)
		}
	}
	ns, err := NewNetns(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := netlink.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: in.Veth, MTU: 1500, TxQLen: 1000},
		PeerName:  "eth0", PeerNamespace: netlink.NsFd(int(ns)),
	}); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	host, err := netlink.LinkByName(in.Veth)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: hostNet(in.HostAddr, 30)}); err != nil {
		return fmt.Errorf("host addr: %w", err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	for _, a := range []netip.Addr{Web1, Web2, Web3, Web4, DNS} {
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(a, 32)}); err != nil {
			return fmt.Errorf("addr %s: %w", a, err)
		}
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: hostNet(peer, 30)}); err != nil {
		return err
	}
	if err := h.LinkSetUp(eth); err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(in.HostAddr.AsSlice())}); err != nil {
		return fmt.Errorf("netns default route: %w", err)
	}
	for _, r := range Ranges {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: prefixNet(r), Gw: net.IP(peer.AsSlice())}); err != nil {
			return fmt.Errorf("route %s: %w", r, err)
		}
	}
	return nil
}

// CheckRoutes asks the kernel how it would route each served address and
// fails unless every one leaves through the test veth.
func (in *Internet) CheckRoutes() error {
	l, err := netlink.LinkByName(in.Veth)
	if err != nil {
		return fmt.Errorf("check routes: %w", err)
	}
	for _, a := range []netip.Addr{Web1, Web2, Web3, Web4, DNS} {
		routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
		if err != nil {
			return fmt.Errorf("route lookup %s: %w", a, err)
		}
		if len(routes) == 0 || routes[0].LinkIndex != l.Attrs().Index {
			return fmt.Errorf("%s is not routed into the fake internet (%v): refusing to send traffic", a, routes)
		}
	}
	return nil
}

// serve starts the HTTP servers and the DNS server inside the namespace.
func (in *Internet) serve(t testing.TB) error {
	ns, err := netns.GetFromPath(in.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	var lns []net.Listener
	var pcs []net.PacketConn
	var discard net.Listener
	err = InNetns(ns, func() error {
		for _, a := range []netip.Addr{Web1, Web2, Web3, Web4} {
			ln, err := net.Listen("tcp4", netip.AddrPortFrom(a, 80).String())
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		dis, err := net.Listen("tcp4", netip.AddrPortFrom(Web1, DiscardPort).String())
		if err != nil {
			return err
		}
		discard = dis
		dl, err := net.Listen("tcp4", netip.AddrPortFrom(DNS, 53).String())
		if err != nil {
			return err
		}
		lns = append(lns, dl)
		pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(DNS, 53).String())
		if err != nil {
			return err
		}
		pcs = append(pcs, pc)
		return nil
	})
	t.Cleanup(func() {
		if discard != nil {
			discard.Close()
		}
		for _, l := range lns {
			l.Close()
		}
		for _, p := range pcs {
			p.Close()
		}
	})
	if err != nil {
		return fmt.Errorf("listen in netns: %w", err)
	}
	go ServeDiscard(discard)
	srv := &http.Server{Handler: in.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	t.Cleanup(func() { _ = srv.Close() })
	for _, ln := range lns[:4] {
		go func() { _ = srv.Serve(ln) }()
	}
	mux := dns.HandlerFunc(in.answer)
	tcp := &dns.Server{Listener: lns[4], Handler: mux}
	udp := &dns.Server{PacketConn: pcs[0], Handler: mux}
	for _, s := range []*dns.Server{tcp, udp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return nil
}

// httpHandler serves:
//
//	GET  /            "hello from <local address>"
//	GET  /bytes?n=N   N bytes of zeros (ingress tests)
//	POST /sink        reads the body, answers the byte count (egress tests)
//	GET  /hold        sends a line then one more every 100 ms until the client leaves
func (in *Internet) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "hello from %s\n", strings.Split(local.String(), ":")[0])
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, zeros{}, n)
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		in.bytesIn.Add(n)
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.HandleFunc("GET /hold", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			if _, err := io.WriteString(w, "tick\n"); err != nil {
				return
			}
			f.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tk.C:
			}
		}
	})
	return mux
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// answer is the authoritative DNS handler: A records for the test names
// (wildcards as "*.suffix"), NXDOMAIN for other names in the zone, REFUSED
// outside it.
func (in *Internet) answer(w dns.ResponseWriter, req *dns.Msg) {
	in.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(Zone, name) {
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	addrs, ok := in.lookup(name)
	if !ok {
		m.Rcode = dns.RcodeNameError
		_ = w.WriteMsg(m)
		return
	}
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL},
				A:   net.IP(a.AsSlice()),
			})
		}
	}
	_ = w.WriteMsg(m)
}

func (in *Internet) lookup(name string) ([]netip.Addr, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if a, ok := in.names[name]; ok {
		return a, true
	}
	labels := dns.SplitDomainName(name)
	for i := 1; i < len(labels); i++ {
		if a, ok := in.names["*."+strings.Join(labels[i:], ".")+"."]; ok {
			return a, true
		}
	}
	return nil, false
}

// SetName adds or replaces a name's A records (fqdn with the trailing dot).
func (in *Internet) SetName(name string, addrs ...netip.Addr) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.names[strings.ToLower(name)] = addrs
}

// Queries returns how many DNS queries the server answered.
func (in *Internet) Queries() int64 { return in.queries.Load() }

// SinkBytes returns the bytes received by POST /sink so far.
func (in *Internet) SinkBytes() int64 { return in.bytesIn.Load() }

// URL returns http://<addr>/<path>.
func URL(a netip.Addr, path string) string {
	return "http://" + a.String() + "/" + strings.TrimPrefix(path, "/")
}

func (in *Internet) remove() {
	for _, r := range Ranges {
		_ = netlink.RouteDel(&netlink.Route{Dst: prefixNet(r)})
	}
	if l, err := netlink.LinkByName(in.Veth); err == nil {
		_ = netlink.LinkDel(l)
	}
	if _, err := os.Stat(in.Netns); err == nil {
		_ = netns.DeleteNamed(strings.TrimPrefix(in.Netns, "/run/netns/"))
	}
}

// InNetns runs f on an OS thread switched into ns.
func InNetns(ns netns.NsHandle, f func() error) error {
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		goruntime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, err) // thread stays locked and dies with the goroutine
	}
	goruntime.UnlockOSThread()
	return ferr
}

// InNetnsPath is InNetns for a bind-mounted namespace path.
func InNetnsPath(path string, f func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return InNetns(ns, f)
}

// DialIn dials from inside the namespace at path (a capsule's), so tests
// act as the capsule. addr must be an IP literal: name resolution would run
// on other threads, outside the namespace.
func DialIn(ctx context.Context, path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetnsPath(path, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClientIn returns an HTTP client whose connections are made inside the
// namespace at path.
func HTTPClientIn(path string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialIn(ctx, path, network, addr)
			},
		},
	}
}

// NewNetns creates the named network namespace (bind-mounted in
// /run/netns) without moving the calling thread into it.
func NewNetns(name string) (netns.NsHandle, error) {
	if err := network.EnsureNetnsDir(); err != nil {
		return 0, err
	}
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		return 0, serr
	}
	goruntime.UnlockOSThread()
	if err != nil {
		return 0, fmt.Errorf("netns %s: %w", name, err)
	}
	return ns, nil
}

func hostNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}
