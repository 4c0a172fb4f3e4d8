package network_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// privateNet puts a "BYOC network" behind the fake internet: addr/32 on
// the namespace's loopback with an HTTP server on port 80, and a host
// route for its /24 into the namespace, checked before any traffic (no
// packet leaves the machine). Removed with t.Cleanup.
func privateNet(t *testing.T, in *nettest.Internet, addr netip.Addr) {
	t.Helper()
	ns, err := netns.GetFromPath(in.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName(in.Veth)
	if err != nil {
		t.Fatal(err)
	}
	peer := in.HostAddr.Next()
	dst := netip.PrefixFrom(addr, 24).Masked()
	route := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Gw: peer.AsSlice()}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatalf("route %s: %v", dst, err)
	}
	t.Cleanup(func() { _ = netlink.RouteDel(route) })
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != host.Attrs().Index {
		t.Fatalf("%s is not routed into the fake internet (%v, %v): refusing to send traffic", addr, routes, err)
	}
	var ln net.Listener
	if err := nettest.InNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 80).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go nettest.ServeDiscard(ln)
}

// TestAllowPrivateRange: a private range the operator allowed for the
// capsule's team (runtime.NetworkPolicy.AllowPrivate) is reachable; a
// private range next to it is not, nor is the allowed one for a capsule
// without it or with internet off; the host, other capsules and link-local
// stay blocked (TestAlwaysBlocked's allow-priv mode).
func TestAllowPrivateRange(t *testing.T) {
	m := newManager(t)
	in := nettest.Start(t)
	allowed, other := netip.MustParseAddr("10.111.0.10"), netip.MustParseAddr("10.112.0.10")
	privateNet(t, in, allowed)
	privateNet(t, in, other)
	target := func(a netip.Addr) string { return netip.AddrPortFrom(a, 80).String() }

	byoc := setup(t, m, "privok", true, &runtime.NetworkPolicy{AllowPrivate: []string{"10.111.0.0/16"}})
	if !reach(t, byoc, target(allowed)) {
		t.Fatalf("allowed private range %s unreachable", allowed)
	}
	if reach(t, byoc, target(other)) {
		t.Fatalf("reached %s outside the allowed range", other)
	}
	if !reach(t, byoc, target(nettest.Web1)) {
		t.Fatal("the internet is unreachable with a private range allowed")
	}
	for i, tc := range []struct {
		internet bool
		p        *runtime.NetworkPolicy
	}{
		{true, nil},
		{true, &runtime.NetworkPolicy{AllowOut: []string{"10.111.0.0/16"}}}, // allow_out never opens a private range
		{false, &runtime.NetworkPolicy{AllowPrivate: []string{"10.111.0.0/16"}}},
	} {
		a := setup(t, m, fmt.Sprintf("privno%d", i), tc.internet, tc.p)
		if reach(t, a, target(allowed)) {
			t.Errorf("case %d (internet %v, %+v): reached %s", i, tc.internet, tc.p, allowed)
		}
	}
	c, err := m.Counters(byoc)
	if err != nil || c.DroppedPackets["private-range"] == 0 {
		t.Errorf("no private-range drops counted for the neighbour: %+v %v", c, err)
	}
}
