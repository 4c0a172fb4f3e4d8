package network

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ConfigureGuest (re)gives the capsule's eth0 what Setup gave it —
// InsideAddr, the permanent neighbour entry of InsideGateway and the
// default route through it (or, with HostSideAddress, the capsule's
// host-side address and a route through Allocation.Host) — leaving what is
// already there. gVisor's runsc (--network=sandbox) moves the address and
// routes from eth0 into its own network stack when a sandbox starts and
// does not put them back when it exits, so a capsule started again (or
// restored) on the same namespace needs them again. (It used to put back
// the host-side address even for inside-address namespaces: the restarted
// sandbox then dropped every packet sent to InsideAddr.)
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
	addr, bits, gw := InsideAddr, insideBits, InsideGateway
	if m.cfg.HostSideAddress {
		addr, bits, gw = a.Guest, 30, a.Host
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(addr, bits)}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("network: guest addr: %w", err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("network: eth0 up: %w", err)
	}
	if !m.cfg.HostSideAddress {
		hostLink, err := netlink.LinkByName(a.Veth)
		if err != nil {
			return fmt.Errorf("network: %s: %w", a.Veth, err)
		}
		if err := h.NeighSet(&netlink.Neigh{
			LinkIndex: eth.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.IP(gw.AsSlice()), HardwareAddr: hostLink.Attrs().HardwareAddr,
		}); err != nil {
			return fmt.Errorf("network: gateway neighbour: %w", err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("network: default route: %w", err)
	}
	return nil
}
