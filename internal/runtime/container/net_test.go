package container_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	goruntime "runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func execCmd(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// fakeInternet is a network namespace with a public-range address
// (203.0.113.2, TEST-NET-3) reached from the host through a veth: traffic
// from capsules to it is forwarded like traffic to the internet.
type fakeInternet struct {
	ns     netns.NsHandle
	addr   string // host:port once listening
	hostIP net.IP
}

func newFakeInternet(t *testing.T) *fakeInternet {
	testutil.LockFakeInternet(t) // 203.0.113.0/24 is machine-wide
	t.Helper()
	name := fmt.Sprintf("wtinet%d", os.Getpid()%100000)
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
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wti" + fmt.Sprint(os.Getpid()%100000)}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	hostIP := net.IPv4(203, 0, 113, 1)
	mustAddr(t, nil, veth.Name, hostIP)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mustAddr(t, h, "eth0", net.IPv4(203, 0, 113, 2))
	lo, _ := h.LinkByName("lo")
	_ = h.LinkSetUp(lo)
	eth, _ := h.LinkByName("eth0")
	// Replies go back through the host (to the masqueraded address).
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: hostIP}); err != nil {
		t.Fatal(err)
	}
	return &fakeInternet{ns: ns, hostIP: hostIP}
}

func mustAddr(t *testing.T, h *netlink.Handle, link string, ip net.IP) {
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

// listen opens a TCP listener inside the fake internet namespace.
func (f *fakeInternet) listen(t *testing.T) net.Listener {
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
	f.addr = ln.Addr().String()
	return ln
}
