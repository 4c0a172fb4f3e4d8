package network

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ConfigureGuest (re)gives the capsule's eth0 its address and default
// route, leaving what is already there. gVisor's runsc (--network=sandbox)
// moves the address and routes from eth0 into its own network stack when a
// sandbox starts and does not put them back when it exits, so a capsule
// started again (or restored) on the same namespace needs them again.
func (m *Manager) ConfigureGuest(a Allocation) error {
	ns, err := netns.GetFromPath(a.Netns)
	if err != nil {
		return fmt.Errorf("network: open netns: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network: netlink in netns: %w", err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("network: eth0: %w", err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(a.Guest, 30)}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("network: guest addr: %w", err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("network: eth0 up: %w", err)
	}
	gw := net.IP(a.Host.AsSlice())
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("network: default route: %w", err)
	}
	return nil
}
