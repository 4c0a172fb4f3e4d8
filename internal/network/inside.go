package network

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// addrTablePrefix + capsule key names the nftables table (family netdev,
// in the host's namespace) that translates between the fixed inside
// addresses and the capsule's host-side pair; the manager's table name
// goes in front (m.addrTable).
const addrTablePrefix = "-addr-"

// addrTable is the translation table of capsule key (toward the capsule),
// addrTable4 its IPv4 twin (from the capsule).
func (m *Manager) addrTable(key string) *nftables.Table {
	return &nftables.Table{Name: m.cfg.Table + addrTablePrefix + key, Family: nftables.TableFamilyNetdev}
}

func (m *Manager) addrTable4(key string) *nftables.Table {
	return &nftables.Table{Name: m.cfg.Table + addrTablePrefix + key, Family: nftables.TableFamilyIPv4}
}

// ifname is an interface name as nftables compares it (NUL-padded).
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// insideTable writes the capsule's address translation, stateless, on the
// host end of its veth pair (netdev ingress and egress hooks, so no
// conntrack runs for it and nothing is kept per flow):
//
//	from the capsule (ingress): saddr InsideAddr    -> a.Guest
//	                            daddr InsideGateway -> a.Host
//	to the capsule (egress):    daddr a.Guest       -> InsideAddr
//	                            saddr a.Host        -> InsideGateway
//
// IP and TCP/UDP checksums are updated with each rewrite. ICMP errors
// carry the offending packet's header: its addresses are translated too
// (with the ICMP checksum), so a capsule's sockets see port-unreachable
// and fragmentation-needed errors for their own addresses.
//
// It lives on the host side, out of the capsule's reach, and because the
// kernel refuses packet rewrites (EPERM) from nftables tables of a network
// namespace owned by another user namespace, which is what a capsule's
// namespace is when user namespaces are on.
func (m *Manager) insideTable(a Allocation) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	// To the capsule: the egress hook of the host end. From the capsule:
	// not its ingress hook, which packets re-injected by the ingress
	// shaper's IFB device skip, but IPv4 prerouting before conntrack
	// (raw priority), matched on the input interface.
	t := c.AddTable(m.addrTable(a.Key))
	t4 := c.AddTable(m.addrTable4(a.Key))
	raw := nftables.ChainPriorityRaw
	in := c.AddChain(&nftables.Chain{Name: "from-capsule", Table: t4, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: raw})
	out := c.AddChain(&nftables.Chain{Name: "to-capsule", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookEgress, Priority: nftables.ChainPriorityFilter, Device: a.Veth})
	iif := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(a.Veth)},
	}
	add := func(ch *nftables.Chain, e ...expr.Any) {
		// The counter (before the rewrite) shows in `nft list table
		// <table>-addr-<key>` what was translated.
		n := len(e) - 2
		e = append(e[:n:n], append([]expr.Any{&expr.Counter{}}, e[n:]...)...)
		tbl := t
		if ch == in {
			tbl = t4
			e = append(append([]expr.Any{}, iif...), e...)
		}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: e})
	}
	const saddr, daddr = 12, 16
	add(in, cat(ipv4(), matchAddr(saddr, netip.PrefixFrom(InsideAddr, 32)), setAddr(saddr, a.Guest))...)
	add(in, cat(ipv4(), matchAddr(daddr, netip.PrefixFrom(InsideGateway, 32)), setAddr(daddr, a.Host))...)
	add(out, cat(ipv4(), matchAddr(daddr, netip.PrefixFrom(a.Guest, 32)), setAddr(daddr, InsideAddr))...)
	add(out, cat(ipv4(), matchAddr(saddr, netip.PrefixFrom(a.Host, 32)), setAddr(saddr, InsideGateway))...)
	// The header inside an ICMP error starts 8 bytes into the ICMP
	// message: its source at +20, its destination at +24.
	const innerSaddr, innerDaddr = 8 + 12, 8 + 16
	for _, typ := range []byte{3, 11, 12} { // unreachable, time exceeded, parameter problem
		add(out, cat(icmpType(typ), matchInner(innerSaddr, a.Guest), setInner(innerSaddr, InsideAddr))...)
		add(out, cat(icmpType(typ), matchInner(innerDaddr, a.Host), setInner(innerDaddr, InsideGateway))...)
		add(in, cat(icmpType(typ), matchInner(innerDaddr, InsideAddr), setInner(innerDaddr, a.Guest))...)
		add(in, cat(icmpType(typ), matchInner(innerSaddr, InsideGateway), setInner(innerSaddr, a.Host))...)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: address translation: %w", err)
	}
	return nil
}

// deleteAddrTables removes the translation tables of the capsules whose
// key gone accepts (a missing table is no error).
func (m *Manager) deleteAddrTables(gone func(key string) bool) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	var tables []*nftables.Table
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyNetdev, nftables.TableFamilyIPv4} {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return fmt.Errorf("network: list tables: %w", err)
		}
		tables = append(tables, ts...)
	}
	prefix := m.cfg.Table + addrTablePrefix
	n := 0
	for _, t := range tables {
		if key, ok := strings.CutPrefix(t.Name, prefix); ok && gone(key) {
			c.DelTable(t)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: delete address translation: %w", err)
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
