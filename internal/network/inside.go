package network

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// insideTableName is the nftables table (family netdev) in each capsule's
// namespace that translates between the fixed inside addresses and the
// capsule's host-side pair.
const insideTableName = "wrenn-addr"

// insideTable writes the capsule namespace's translation, stateless, on
// its eth0 (netdev ingress and egress hooks, so no conntrack runs in the
// capsule's namespace and nothing is kept per flow):
//
//	out (egress):  saddr InsideAddr    -> a.Guest
//	               daddr InsideGateway -> a.Host
//	in (ingress):  daddr a.Guest       -> InsideAddr
//	               saddr a.Host        -> InsideGateway
//
// IP and TCP/UDP checksums are updated with each rewrite. ICMP errors
// carry the offending packet's header: its addresses are translated too
// (with the ICMP checksum), so a capsule's sockets see port-unreachable
// and fragmentation-needed errors for their own addresses.
//
// The host does not rely on this table for isolation: a capsule that
// could remove it would send from InsideAddr, which the host veth's strict
// reverse-path filter drops.
func (m *Manager) insideTable(ns netns.NsHandle, a Allocation) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("network: nftables in netns: %w", err)
	}
	t := c.AddTable(&nftables.Table{Name: insideTableName, Family: nftables.TableFamilyNetdev})
	prio := nftables.ChainPriorityFilter
	out := c.AddChain(&nftables.Chain{Name: "out", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookEgress, Priority: prio, Device: "eth0"})
	in := c.AddChain(&nftables.Chain{Name: "in", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookIngress, Priority: prio, Device: "eth0"})
	add := func(ch *nftables.Chain, e ...expr.Any) {
		// The counter (before the rewrite) shows in `nft list table netdev
		// wrenn-addr` inside the namespace what was translated.
		n := len(e) - 2
		e = append(e[:n:n], append([]expr.Any{&expr.Counter{}}, e[n:]...)...)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}
	const saddr, daddr = 12, 16
	add(out, cat(ipv4(), matchAddr(saddr, netip.PrefixFrom(InsideAddr, 32)), setAddr(saddr, a.Guest))...)
	add(out, cat(ipv4(), matchAddr(daddr, netip.PrefixFrom(InsideGateway, 32)), setAddr(daddr, a.Host))...)
	add(in, cat(ipv4(), matchAddr(daddr, netip.PrefixFrom(a.Guest, 32)), setAddr(daddr, InsideAddr))...)
	add(in, cat(ipv4(), matchAddr(saddr, netip.PrefixFrom(a.Host, 32)), setAddr(saddr, InsideGateway))...)
	// The header inside an ICMP error starts 8 bytes into the ICMP
	// message: its source at +20, its destination at +24.
	const innerSaddr, innerDaddr = 8 + 12, 8 + 16
	for _, typ := range []byte{3, 11, 12} { // unreachable, time exceeded, parameter problem
		add(in, cat(icmpType(typ), matchInner(innerSaddr, a.Guest), setInner(innerSaddr, InsideAddr))...)
		add(in, cat(icmpType(typ), matchInner(innerDaddr, a.Host), setInner(innerDaddr, InsideGateway))...)
		add(out, cat(icmpType(typ), matchInner(innerDaddr, InsideAddr), setInner(innerDaddr, a.Guest))...)
		add(out, cat(icmpType(typ), matchInner(innerSaddr, InsideGateway), setInner(innerSaddr, a.Host))...)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: address translation in netns: %w", err)
	}
	return nil
}

// ipv4 matches IPv4 frames (netdev hooks see every protocol).
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x08, 0x00}},
	}
}

// setAddr writes addr at offset of the IPv4 header, updating the header
// checksum and the TCP/UDP checksum (its pseudo-header).
func setAddr(offset uint32, addr netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: addr.AsSlice()},
		&expr.Payload{
			OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4,
			CsumType: expr.CsumTypeInet, CsumOffset: 10, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR,
		},
	}
}

// icmpType matches IPv4 ICMP messages of type typ.
func icmpType(typ byte) []expr.Any {
	return cat(ipv4(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
	})
}

func matchInner(offset uint32, addr netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
	}
}

// setInner rewrites an address of the header inside an ICMP error,
// updating the ICMP checksum (at +2).
func setInner(offset uint32, addr netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: addr.AsSlice()},
		&expr.Payload{
			OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 4,
			CsumType: expr.CsumTypeInet, CsumOffset: 2,
		},
	}
}
