package network_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestConfigureGuestAfterRunsc (issue 18): gVisor's runsc takes eth0's
// address and routes into its own network stack and does not give them
// back when the sandbox exits. ConfigureGuest must restore what Setup
// gave eth0 — InsideAddr and the route through InsideGateway — so the
// host reaches the capsule again at its host-side address. It used to
// add the host-side address instead, and a gVisor capsule started a
// second time (stop/start, a fallback boot after a failed memory restore)
// dropped every packet. Subnet 10.48.1.0/24 (the gVisor range).
func TestConfigureGuestAfterRunsc(t *testing.T) {
	testutil.RequireRoot(t)
	removeStaleTables(t)
	tag := fmt.Sprintf("wcg%d", os.Getpid()%100000)
	m, err := network.New(network.Config{Subnet: netip.MustParsePrefix("10.48.1.0/24"), Table: tag, NetnsPrefix: tag + "-", NoDNS: true}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); _ = m.RemoveTable() })
	a, err := m.Setup("cg1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(a) })
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
	// What runsc does at sandbox start: eth0 keeps neither its addresses
	// nor its routes.
	addrs, _ := h.AddrList(eth, netlink.FAMILY_V4)
	for _, ad := range addrs {
		if err := h.AddrDel(eth, &ad); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // idempotent
		if err := m.ConfigureGuest(a); err != nil {
			t.Fatal(err)
		}
	}
	addrs, _ = h.AddrList(eth, netlink.FAMILY_V4)
	var got []string
	for _, ad := range addrs {
		got = append(got, ad.IPNet.String())
	}
	if want := netip.PrefixFrom(network.InsideAddr, 30).String(); !slices.Equal(got, []string{want}) {
		t.Errorf("eth0 addresses after ConfigureGuest: %v, want [%s]", got, want)
	}
	routes, _ := h.RouteList(eth, netlink.FAMILY_V4)
	var gw bool
	for _, r := range routes {
		def := r.Dst == nil || r.Dst.String() == "0.0.0.0/0"
		gw = gw || (def && r.Gw.Equal(net.IP(network.InsideGateway.AsSlice())))
	}
	if !gw {
		t.Errorf("no default route through %s after ConfigureGuest: %v", network.InsideGateway, routes)
	}
	// The host reaches a service listening on the inside address at the
	// capsule's host-side address again.
	ln := listenIn(t, a.Netns, net.JoinHostPort(network.InsideAddr.String(), "8080"))
	go func() {
		if c, err := ln.Accept(); err == nil {
			_, _ = c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(a.Guest.String(), "8080"), 3*time.Second)
	if err != nil {
		t.Fatalf("host cannot reach the namespace after ConfigureGuest: %v", err)
	}
	b := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(b); err != nil {
		t.Errorf("read from the namespace: %v", err)
	}
	c.Close()
}
