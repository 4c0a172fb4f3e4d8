package network_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
)

// insideView returns the IPv4 addresses of eth0 and the default gateway
// as the capsule's namespace sees them.
func insideView(t *testing.T, a network.Allocation) (addrs []string, gw string) {
	t.Helper()
	ns, err := netns.GetFromPath(a.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	as, err := h.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range as {
		addrs = append(addrs, ad.IPNet.String())
	}
	routes, err := h.RouteList(eth, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			gw = r.Gw.String()
		}
	}
	return addrs, gw
}

// TestInsideAddress (issue 13 item 3): every capsule sees the same address
// and gateway; the host reaches each at its own host-side address (and the
// capsule sees the host as its gateway); egress, DNS through the gateway
// and ICMP errors for the capsule's own sockets work through the
// translation; a capsule without the translation (as if it removed it)
// reaches neither the internet nor the host.
func TestInsideAddress(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	a := setup(t, m, "ina", true, nil)
	b := setup(t, m, "inb", true, nil)
	for _, al := range []network.Allocation{a, b} {
		addrs, gw := insideView(t, al)
		if len(addrs) != 1 || addrs[0] != network.InsideAddr.String()+"/30" || gw != network.InsideGateway.String() {
			t.Fatalf("%s sees %v via %s; want %s/30 via %s", al.Key, addrs, gw, network.InsideAddr, network.InsideGateway)
		}
	}
	if a.Guest == b.Guest {
		t.Fatalf("host-side addresses shared: %s", a.Guest)
	}

	// Host -> capsule at its host-side address; the capsule sees its
	// gateway as the peer. Each capsule's service answers on its own
	// host-side address only.
	for _, al := range []network.Allocation{a, b} {
		ln := listenIn(t, al.Netns, net.JoinHostPort(network.InsideAddr.String(), "7070"))
		peer := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				peer <- err.Error()
				return
			}
			peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			_, _ = c.Write([]byte(al.Key))
			c.Close()
		}()
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(al.Guest.String(), "7070"), 2*time.Second)
		if err != nil {
			t.Fatalf("host to %s: %v", al.Key, err)
		}
		buf := make([]byte, 8)
		n, _ := c.Read(buf)
		c.Close()
		if string(buf[:n]) != al.Key {
			t.Errorf("host to %s answered %q", al.Guest, buf[:n])
		}
		if p := <-peer; p != network.InsideGateway.String() {
			t.Errorf("%s saw the host as %s, want %s", al.Key, p, network.InsideGateway)
		}
	}

	// Egress and DNS through the translation.
	if body, err := fetch(a, nettest.URL(nettest.Web1, "/")); err != nil || !strings.Contains(body, nettest.Web1.String()) {
		t.Fatalf("fetch: %q %v", body, err)
	}
	for _, proto := range []string{"udp", "tcp"} {
		if r, err := resolve(t, a, network.InsideGateway, proto, "x.wild."+nettest.Zone); err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s DNS via %s: %v %v", proto, network.InsideGateway, r, err)
		}
	}

	// ICMP port unreachable from outside reaches the capsule's connected
	// UDP socket (the header inside the error is translated back).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := nettest.DialIn(ctx, a.Netns, "udp4", netip.AddrPortFrom(nettest.Web1, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var refused bool
	for i := 0; i < 3 && !refused; i++ {
		_, _ = c.Write([]byte("x"))
		_, err = c.Read(make([]byte, 8))
		refused = errors.Is(err, syscall.ECONNREFUSED)
	}
	if !refused {
		t.Errorf("UDP to a closed port: %v, want connection refused (ICMP error translated)", err)
	}

	// The translation lives on the host end of the veth pair, out of the
	// capsule's reach: its own namespace holds no nftables table at all.
	ns, err := netns.GetFromPath(b.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	nc, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	if ts, err := nc.ListTables(); err != nil || len(ts) != 0 {
		t.Errorf("the capsule's namespace holds nftables tables %v (%v), want none", ts, err)
	}
}
