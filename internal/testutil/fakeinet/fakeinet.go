// Package fakeinet gives tests an "internet" host: a network namespace
// with a public-range address (203.0.113.2, TEST-NET-3) reached from the
// host through a veth, so traffic from capsules to it is forwarded like
// traffic to any outside address. It needs root.
package fakeinet

import (
	"fmt"
	"net"
	"net/http"
	"os"
	goruntime "runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// Net is the fake internet host.
type Net struct {
	ns     netns.NsHandle
	HostIP net.IP // the host's end of the veth (203.0.113.1)
}

// New creates the namespace and its link; both go when t ends. tag keeps
// names unique among packages running at once (at most 4 characters).
func New(t *testing.T, tag string) *Net {
	testutil.LockFakeInternet(t) // 203.0.113.0/24 is machine-wide
	t.Helper()
	suffix := fmt.Sprintf("%s%d", tag, os.Getpid()%100000)
	name := "wtinet" + suffix
	// Before the pin, as the network manager does: a /run/netns made a
	// mount point later would hide it (network.EnsureNetnsDir).
	if err := network.EnsureNetnsDir(); err != nil {
		t.Fatal(err)
	}
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		_ = netns.DeleteNamed(name)
	})
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wti" + suffix}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	hostIP := net.IPv4(203, 0, 113, 1)
	addr(t, nil, veth.Name, hostIP)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addr(t, h, "eth0", net.IPv4(203, 0, 113, 2))
	lo, _ := h.LinkByName("lo")
	_ = h.LinkSetUp(lo)
	eth, _ := h.LinkByName("eth0")
	// Replies go back through the host (to the masqueraded address).
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: hostIP}); err != nil {
		t.Fatal(err)
	}
	return &Net{ns: ns, HostIP: hostIP}
}

func addr(t *testing.T, h *netlink.Handle, link string, ip net.IP) {
	t.Helper()
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// Serve answers "ok" over HTTP on 203.0.113.2 until t ends and returns
// its "ip:port".
func (f *Net) Serve(t *testing.T) string {
	t.Helper()
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(f.ns); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp4", "203.0.113.2:0")
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }),
		ReadHeaderTimeout: time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}
