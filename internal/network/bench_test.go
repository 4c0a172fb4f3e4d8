package network_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

const benchBytes = 256 << 20

// plainPair makes the baseline: two namespaces joined by a plain veth
// pair (no firewall, no NAT, no shaping), with a discard server in the
// second. It returns the first namespace's path and the server address.
func plainPair(b *testing.B) (string, string) {
	b.Helper()
	tag := fmt.Sprintf("wtb%d", os.Getpid()%100000)
	var paths []string
	for _, n := range []string{tag + "a", tag + "b"} {
		ns, err := nettest.NewNetns(n)
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
		paths = append(paths, "/run/netns/"+n)
		b.Cleanup(func() { _ = netns.DeleteNamed(n) })
	}
	addrs := []string{"192.0.0.201/30", "192.0.0.202/30"} // never leaves the pair
	for i, p := range paths {
		ns, err := netns.GetFromPath(p)
		if err != nil {
			b.Fatal(err)
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		if i == 0 {
			peer, err := netns.GetFromPath(paths[1])
			if err != nil {
				b.Fatal(err)
			}
			defer peer.Close()
			if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0", MTU: 1500, TxQLen: 1000}, PeerName: "v1", PeerNamespace: netlink.NsFd(int(peer))}); err != nil {
				b.Fatal(err)
			}
		}
		l, err := h.LinkByName(fmt.Sprintf("v%d", i))
		if err != nil {
			b.Fatal(err)
		}
		a, _ := netlink.ParseAddr(addrs[i])
		if err := h.AddrAdd(l, a); err != nil {
			b.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			b.Fatal(err)
		}
	}
	var ln net.Listener
	if err := nettest.InNetnsPath(paths[1], func() error {
		var err error
		ln, err = net.Listen("tcp4", "192.0.0.202:9")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go nettest.ServeDiscard(ln)
	return paths[0], "192.0.0.202:9"
}

// routedFloor makes the floor of any routed capsule design: a namespace
// joined to the host by a veth pair, routed by the host to the fake
// internet like a capsule, but with no per-capsule firewall chain, no NAT,
// no shaping and no address translation (10.110.0.0/30, outside every
// manager's subnet). It returns the namespace's path.
func routedFloor(b *testing.B) string {
	b.Helper()
	name := fmt.Sprintf("wtr%d", os.Getpid()%100000)
	ns, err := nettest.NewNetns(name)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	b.Cleanup(func() { _ = netns.DeleteNamed(name) })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500, TxQLen: 1000}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		b.Fatal(err)
	}
	host, err := netlink.LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = netlink.LinkDel(host) })
	ha, _ := netlink.ParseAddr("10.110.0.1/30")
	if err := netlink.AddrAdd(host, ha); err != nil {
		b.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	ga, _ := netlink.ParseAddr("10.110.0.2/30")
	if err := h.AddrAdd(eth, ga); err != nil {
		b.Fatal(err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		b.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IPv4(10, 110, 0, 1)}); err != nil {
		b.Fatal(err)
	}
	return "/run/netns/" + name
}

// send pushes n bytes over one TCP connection made in the namespace at
// path and returns the rate in MB/s.
func send(b *testing.B, path, addr string, n int) float64 {
	b.Helper()
	c, err := nettest.DialIn(context.Background(), path, "tcp4", addr)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	return float64(n) / (1 << 20) / time.Since(start).Seconds()
}

// BenchmarkCapsuleThroughput: capsule → fake-internet TCP throughput with
// no effective rate limit, against a plain veth pair in the same run.
func BenchmarkCapsuleThroughput(b *testing.B) {
	testutil.RequireRoot(b)
	m := newManager(b)
	nettest.Start(b)
	a, err := m.Setup("bthr", true, &runtime.NetworkPolicy{EgressMBps: runtime.MaxRateMBps, IngressMBps: runtime.MaxRateMBps})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Teardown(a) })
	base, baseAddr := plainPair(b)
	floor := routedFloor(b)
	target := netip.AddrPortFrom(nettest.Web1, nettest.DiscardPort).String()
	var sb, sf, sc float64
	b.ResetTimer()
	for range b.N {
		sb += send(b, base, baseAddr, benchBytes)
		sf += send(b, floor, target, benchBytes)
		sc += send(b, a.Netns, target, benchBytes)
	}
	b.ReportMetric(sb/float64(b.N), "baseline_MB/s")
	b.ReportMetric(sf/float64(b.N), "routed_floor_MB/s")
	b.ReportMetric(sc/float64(b.N), "capsule_MB/s")
	b.ReportMetric(sc/sb, "ratio")
	b.ReportMetric(sf/sb, "floor_ratio")
	b.ReportMetric(sc/sf, "capsule_vs_floor")
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkConnectionSetup: TCP connect p50 from a capsule with a
// 1,000-entry domain allow-list (its destination resolved through the
// forwarder) against a capsule with no policy, same run.
func BenchmarkConnectionSetup(b *testing.B) {
	testutil.RequireRoot(b)
	m := newManager(b)
	nettest.Start(b)
	allowed := "allowed." + nettest.Zone
	names := []string{allowed}
	for i := len(names); i < runtime.MaxNetworkRules-1; i++ {
		names = append(names, fmt.Sprintf("host%d.example.org", i))
	}
	plain, err := m.Setup("bcplain", true, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Teardown(plain) })
	pol, err := m.Setup("bcpol", true, &runtime.NetworkPolicy{AllowOut: names, DenyOut: []string{"0.0.0.0/0"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Teardown(pol) })
	if r, err := resolveB(pol, allowed); err != nil || len(r.Answer) == 0 {
		b.Fatalf("resolve: %v %v", r, err)
	}
	target := web(nettest.Web1)
	connect := func(a network.Allocation) time.Duration {
		start := time.Now()
		c, err := nettest.DialIn(context.Background(), a.Netns, "tcp4", target)
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		c.Close()
		return d
	}
	var dp, dq []time.Duration
	b.ResetTimer()
	for range b.N {
		dp = append(dp, connect(plain))
		dq = append(dq, connect(pol))
	}
	pp, pq := p50(dp), p50(dq)
	b.ReportMetric(float64(pp.Microseconds()), "no_policy_p50_µs")
	b.ReportMetric(float64(pq.Microseconds()), "policy_p50_µs")
	b.ReportMetric(float64(pq)/float64(pp), "ratio")
}

func resolveB(a network.Allocation, name string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := nettest.DialIn(ctx, a.Netns, "udp4", netip.AddrPortFrom(network.InsideGateway, 53).String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// BenchmarkDNSForwarder: p50 of an A query from a capsule through its
// forwarder (domain allow-list in force, so each answer is also written to
// the capsule's nftables set), and of the same query straight to the
// upstream from the host, same run.
func BenchmarkDNSForwarder(b *testing.B) {
	testutil.RequireRoot(b)
	m := newManager(b)
	nettest.Start(b)
	allowed := "allowed." + nettest.Zone
	a, err := m.Setup("bdns", true, &runtime.NetworkPolicy{AllowOut: []string{allowed}, DenyOut: []string{"0.0.0.0/0"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Teardown(a) })
	cl := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(allowed, dns.TypeA)
	var df, dd []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if r, err := resolveB(a, allowed); err != nil || len(r.Answer) == 0 {
			b.Fatalf("forwarder: %v %v", r, err)
		}
		df = append(df, time.Since(start))
		start = time.Now()
		if _, _, err := cl.Exchange(q, netip.AddrPortFrom(nettest.DNS, 53).String()); err != nil {
			b.Fatal(err)
		}
		dd = append(dd, time.Since(start))
	}
	b.ReportMetric(float64(p50(df).Microseconds())/1000, "forwarder_p50_ms")
	b.ReportMetric(float64(p50(dd).Microseconds())/1000, "direct_p50_ms")
}
