package network

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// alwaysBlocked are destinations no policy opens: "this" network, loopback,
// link-local (with the cloud metadata address 169.254.169.254), multicast
// and reserved. The capsule subnet (every other capsule) is added per
// manager. The host's own addresses never reach the forward hook: the
// input chain drops them.
var alwaysBlocked = []string{"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"}

// privateRanges are blocked unless the policy's AllowPrivate opens a part.
var privateRanges = []string{
	"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
}

// Names of a capsule's own nftables objects.
func chainName(key string) string    { return "c-" + key }
func allowSetName(key string) string { return "a-" + key }
func denySetName(key string) string  { return "d-" + key }
func privSetName(key string) string  { return "p-" + key }
func dnsSetName(key string) string   { return "r-" + key }

// Rule names carried as user data of a capsule's drop rules; the counters
// of these rules are the capsule's dropped-packet counters.
const (
	ruleBlocked  = "always-blocked"
	rulePrivate  = "private-range"
	ruleNoNet    = "allow_internet=false"
	ruleResolver = "outside-resolver"
	ruleDeny     = "deny_out"
	ruleDefault  = "deny_out 0.0.0.0/0"
	ruleAccept   = "accept"
)

// policyState is what the manager keeps per capsule.
type policyState struct {
	internet bool
	source   *runtime.NetworkPolicy
	pol      *runtime.CompiledPolicy
	// held: the capsule's chain, sets and rate limits are written for
	// (internet, pol) but its dispatch rule is not, so it has no egress
	// (SetupHeld); a SetPolicy with the same policy only adds the rule.
	held bool
}

// SetPolicy applies (or replaces, live) the capsule's egress policy and
// rate limits. The capsule's chain and sets are rewritten in one nftables
// transaction, so there is no moment without rules; established
// connections are accepted before the chain and keep flowing (also ones the
// new policy would deny, until they close). Addresses the DNS forwarder
// added for the old policy are dropped: the capsule resolves again. An
// invalid policy returns an error wrapping runtime.ErrInvalidSpec and
// changes nothing.
//
// A capsule set up held (SetupHeld) whose new policy is the one it was
// held with gets only its dispatch rule: one nftables rule added, no chain
// or set rewritten. Rewriting costs 10-20 ms because the kernel waits for
// an RCU grace period before it commits a rule or element deletion; an
// addition commits in about 0.1 ms.
func (m *Manager) SetPolicy(a Allocation, allowInternet bool, p *runtime.NetworkPolicy) error {
	return m.setPolicy(a, allowInternet, p, false)
}

func (m *Manager) setPolicy(a Allocation, allowInternet bool, p *runtime.NetworkPolicy, hold bool) error {
	c, err := p.Compile()
	if err != nil {
		return err
	}
	if st := m.policy(a.Key); !hold && st != nil && st.held && st.internet == allowInternet && reflect.DeepEqual(st.pol, c) {
		if err := m.dispatch(a); err != nil {
			return err
		}
		m.mu.Lock()
		m.policies[a.Key] = &policyState{internet: allowInternet, source: p, pol: c}
		m.mu.Unlock()
		return nil
	}
	// Rewriting the chain resets its counters: carry the drops over.
	if old, err := m.Counters(a); err == nil {
		m.mu.Lock()
		m.dropBase[a.Key] = old.DroppedPackets
		m.mu.Unlock()
	}
	if err := m.writeChain(a, allowInternet, c, !hold); err != nil {
		return err
	}
	if err := m.setRates(a, c); err != nil {
		return err
	}
	m.mu.Lock()
	m.policies[a.Key] = &policyState{internet: allowInternet, source: p, pol: c, held: hold}
	delete(m.resolved, a.Key) // the rewrite emptied the resolved set
	m.mu.Unlock()
	if m.dns != nil {
		if err := m.dns.attach(a); err != nil {
			return err
		}
	}
	return nil
}

// DNSServer returns the address the capsule resolves through (its
// gateway as the capsule sees it, InsideGateway; the forwarder listens on
// the host-side a.Host), false when the forwarder is off.
func (m *Manager) DNSServer(a Allocation) (netip.Addr, bool) {
	return InsideGateway, m.dns != nil
}

// policy returns the capsule's enforced policy (nil when unknown).
func (m *Manager) policy(key string) *policyState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.policies[key]
}

// dispatchRule is the capsules chain's rule sending the capsule's new
// flows to its own chain.
func (m *Manager) dispatchRule(a Allocation) *nftables.Rule {
	exprs := cat(matchIfname(expr.MetaKeyIIFNAME, a.Veth, false, expr.CmpOpEq), matchAddr(12, netip.PrefixFrom(a.Guest, 32)))
	exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictJump, Chain: chainName(a.Key)})
	return &nftables.Rule{Table: m.table, Chain: &nftables.Chain{Name: capsuleChain, Table: m.table}, Exprs: exprs, UserData: []byte(a.Key)}
}

// dispatch adds the capsule's dispatch rule (its chain exists; the
// capsule is held, so the rule does not).
func (m *Manager) dispatch(a Allocation) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	c.AddRule(m.dispatchRule(a))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: release %s: %w", a.Key, err)
	}
	return nil
}

// writeChain writes the capsule's chain and sets for the policy and, with
// dispatch, its dispatch rule when it is missing.
func (m *Manager) writeChain(a Allocation, internet bool, pol *runtime.CompiledPolicy, dispatch bool) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("network: list chains: %w", err)
	}
	var chain *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == m.cfg.Table && ch.Name == chainName(a.Key) {
			chain = ch
		}
	}
	if chain == nil {
		chain = c.AddChain(&nftables.Chain{Name: chainName(a.Key), Table: m.table})
	} else {
		c.FlushChain(chain)
	}
	existing := map[string]*nftables.Set{}
	sets, err := c.GetSets(m.table)
	if err != nil {
		return fmt.Errorf("network: list sets: %w", err)
	}
	for _, s := range sets {
		existing[s.Name] = s
	}
	set := func(name string, prefixes []netip.Prefix, timeout bool) (*nftables.Set, error) {
		s := existing[name]
		if s == nil {
			s = &nftables.Set{Table: m.table, Name: name, KeyType: nftables.TypeIPAddr, Interval: !timeout, HasTimeout: timeout}
			if err := c.AddSet(s, nil); err != nil {
				return nil, fmt.Errorf("network: add set %s: %w", name, err)
			}
		} else {
			c.FlushSet(s)
		}
		if len(prefixes) > 0 {
			if err := c.SetAddElements(s, intervalElements(prefixes)); err != nil {
				return nil, fmt.Errorf("network: set %s: %w", name, err)
			}
		}
		return s, nil
	}
	allow, err := set(allowSetName(a.Key), pol.AllowNets, false)
	if err != nil {
		return err
	}
	deny, err := set(denySetName(a.Key), pol.DenyNets, false)
	if err != nil {
		return err
	}
	priv, err := set(privSetName(a.Key), pol.AllowPrivate, false)
	if err != nil {
		return err
	}
	resolved, err := set(dnsSetName(a.Key), nil, true)
	if err != nil {
		return err
	}
	add := func(tag string, e ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: m.table, Chain: chain, Exprs: e, UserData: []byte(tag)})
	}
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	// dropRule adds a drop rule, after its (rate-limited) denial log rule.
	dropRule := func(tag string, match ...expr.Any) {
		if m.nflog != nil {
			add("log", m.logRule(a.Key, tag, match)...)
		}
		add(tag, cat(match, drop)...)
	}
	for _, r := range append(slices.Clone(alwaysBlocked), m.cfg.Subnet.String()) {
		dropRule(ruleBlocked, matchAddr(16, netip.MustParsePrefix(r))...)
	}
	if internet && len(pol.AllowPrivate) > 0 { // allow_internet false: no egress at all
		add("allow_private", cat(lookup(16, priv), accept)...)
	}
	for _, r := range privateRanges {
		dropRule(rulePrivate, matchAddr(16, netip.MustParsePrefix(r))...)
	}
	if !internet {
		dropRule(ruleNoNet)
	} else {
		if pol.HasNames() {
			dropRule(ruleResolver, matchPort(unix.IPPROTO_UDP, 53)...)
			dropRule(ruleResolver, matchPort(unix.IPPROTO_TCP, 53)...)
			dropRule(ruleResolver, matchPort(unix.IPPROTO_TCP, 853)...)
		}
		if len(pol.AllowNets) > 0 {
			add("allow_out", cat(lookup(16, allow), accept)...)
		}
		if pol.DomainAllowList() {
			add("allow_out (resolved name)", cat(lookup(16, resolved), accept)...)
		}
		if len(pol.DenyNets) > 0 {
			dropRule(ruleDeny, lookup(16, deny)...)
		}
		if pol.DefaultDeny {
			dropRule(ruleDefault)
		} else {
			add(ruleAccept, accept...)
		}
	}
	// The dispatch rule in the capsules chain: created once, kept across
	// policy changes.
	if dispatch {
		rules, err := c.GetRules(m.table, &nftables.Chain{Name: capsuleChain, Table: m.table})
		if err != nil {
			return fmt.Errorf("network: list rules: %w", err)
		}
		if !slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return string(r.UserData) == a.Key }) {
			c.AddRule(m.dispatchRule(a))
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: write policy of %s: %w", a.Key, err)
	}
	return nil
}

// deleteCapsuleObjects removes the chains and sets of every key del
// selects (their dispatch rules must be gone already).
func (m *Manager) deleteCapsuleObjects(del func(key string) bool) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("network: list chains: %w", err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name == m.cfg.Table && strings.HasPrefix(ch.Name, "c-") && del(ch.Name[2:]) {
			c.FlushChain(ch)
			c.DelChain(ch)
			n++
		}
	}
	sets, err := c.GetSets(m.table)
	if err != nil {
		return fmt.Errorf("network: list sets: %w", err)
	}
	for _, s := range sets {
		if len(s.Name) > 2 && s.Name[1] == '-' && strings.ContainsRune("adpr", rune(s.Name[0])) && del(s.Name[2:]) {
			c.DelSet(s)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: delete capsule chains: %w", err)
	}
	return nil
}

// addResolved lets the capsule reach addrs for ttl (the DNS forwarder
// calls it with the answered A records). An address already in the set
// gets the longer of its remaining and the new timeout.
//
// An nftables commit costs 10-20 ms (it waits for an RCU grace period), so
// addresses whose element the manager knows to live for at least half the
// new timeout are not written again.
func (m *Manager) addResolved(key string, addrs []netip.Addr, ttl time.Duration) error {
	ttl = max(ttl+5*time.Second, 10*time.Second)
	now := time.Now()
	m.mu.Lock()
	known := m.resolved[key]
	if known == nil {
		known = map[netip.Addr]time.Time{}
		m.resolved[key] = known
	}
	var todo []netip.Addr
	for _, a := range addrs {
		if known[a].Sub(now) < ttl/2 {
			todo = append(todo, a)
		}
	}
	m.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	addrs = todo
	defer func() {
		m.mu.Lock()
		if k := m.resolved[key]; k != nil {
			for _, a := range todo {
				k[a] = now.Add(ttl)
			}
		}
		m.mu.Unlock()
	}()
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return err
	}
	s := &nftables.Set{Table: m.table, Name: dnsSetName(key), KeyType: nftables.TypeIPAddr, HasTimeout: true}
	elems := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice(), Timeout: ttl})
	}
	// Delete-then-add refreshes a present element's timeout; when one is
	// absent the transaction fails as a whole and a plain add follows.
	if err := c.SetDeleteElements(s, elems); err != nil {
		return err
	}
	if err := c.SetAddElements(s, elems); err != nil {
		return err
	}
	if err := c.Flush(); err == nil {
		return nil
	}
	if err := c.SetAddElements(s, elems); err != nil {
		return err
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("network: add resolved addresses: %w", err)
	}
	return nil
}

// intervalElements turns prefixes into the elements of an interval set:
// overlapping and adjacent ranges merged, each as a start and an
// exclusive end (none for a range that reaches 255.255.255.255).
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi uint64 } // hi exclusive
	spans := make([]span, 0, len(ps))
	for _, p := range ps {
		lo := uint64(binary.BigEndian.Uint32(p.Masked().Addr().AsSlice()))
		spans = append(spans, span{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 && s.lo <= merged[n-1].hi {
			merged[n-1].hi = max(merged[n-1].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, uint32(s.lo))})
		if s.hi <= math.MaxUint32 {
			out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, uint32(s.hi)), IntervalEnd: true})
		}
	}
	return out
}

// lookup matches the source (12) or destination (16) address against a set.
func lookup(offset uint32, s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// matchPort matches the layer-4 protocol and destination port.
func matchPort(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// Counters are a capsule's traffic counters.
type Counters struct {
	// BytesOut and BytesIn count what the capsule sent and received
	// (its host-side veth's counters).
	BytesOut, BytesIn uint64
	// DroppedPackets counts packets of new outbound connections the
	// policy dropped, by rule name.
	DroppedPackets map[string]uint64
}

// Dropped is the sum of DroppedPackets.
func (c Counters) Dropped() uint64 {
	var n uint64
	for _, v := range c.DroppedPackets {
		n += v
	}
	return n
}

// Counters reads the capsule's counters.
func (m *Manager) Counters(a Allocation) (Counters, error) {
	out := Counters{DroppedPackets: map[string]uint64{}}
	m.mu.Lock()
	for k, v := range m.dropBase[a.Key] {
		out.DroppedPackets[k] = v
	}
	m.mu.Unlock()
	if l, err := netlink.LinkByName(a.Veth); err == nil && l.Attrs().Statistics != nil {
		// The host end receives what the capsule sends.
		out.BytesOut = l.Attrs().Statistics.RxBytes
		out.BytesIn = l.Attrs().Statistics.TxBytes
	}
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return out, err
	}
	rules, err := c.GetRules(m.table, &nftables.Chain{Name: chainName(a.Key), Table: m.table})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return out, nil
		}
		return out, err
	}
	for _, r := range rules {
		if !isDropRule(r) {
			continue
		}
		for _, e := range r.Exprs {
			if ct, ok := e.(*expr.Counter); ok && ct.Packets > 0 {
				out.DroppedPackets[string(r.UserData)] += ct.Packets
			}
		}
	}
	return out, nil
}

func isDropRule(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictDrop {
			return true
		}
	}
	return false
}

// IFBPrefix names a capsule's IFB device ("wb<key>"), which shapes what
// the capsule sends.
const IFBPrefix = "wb"

// setRates puts the capsule's rate limits on its host-side veth, one
// mechanism for every isolation (a VM's tap gets the same):
//   - what the capsule receives leaves the host through the veth: a token
//     bucket (tbf) shapes it, in the default class of an htb root qdisc
//     whose other class (unshaped) takes only the agent's traffic to envd
//     (TCP from the host-side address to the capsule's envd port);
//   - what the capsule sends enters the host through the veth: a u32
//     match-all filter on the veth's ingress qdisc redirects it (mirred) to
//     the capsule's IFB device "wb<key>", whose tbf root qdisc shapes it;
//     a filter before it lets envd's answers to the agent (TCP from the
//     envd port to the host-side address, which the input chain accepts
//     only as replies) pass unshaped.
//     (An ingress policer would need act_police, which not every kernel
//     has; shaping also treats TCP more gently than policing.)
//
// The limits are the capsule's network's; the API's data path (exec
// output, file transfers: the user's own authenticated requests, relayed
// by the agent) is not capsule traffic and is not shaped (issue 21: it
// was capped at the default 200 MB/s after the burst).
//
// Both buckets hold the policy's burst; each queues at most about 50 ms.
// A capsule whose veth still has the older layout (a root tbf, one
// filter; from before an agent upgrade) keeps it.
func (m *Manager) setRates(a Allocation, pol *runtime.CompiledPolicy) error {
	l, err := netlink.LinkByName(a.Veth)
	if err != nil {
		return fmt.Errorf("network: %s: %w", a.Veth, err)
	}
	ifbName := IFBPrefix + a.Key
	ifb, err := netlink.LinkByName(ifbName)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifbName, TxQLen: 1000}}); err != nil {
			return fmt.Errorf("network: add %s: %w", ifbName, err)
		}
		if ifb, err = netlink.LinkByName(ifbName); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	if err := netlink.LinkSetUp(ifb); err != nil {
		return fmt.Errorf("network: %s up: %w", ifbName, err)
	}
	burst := uint32(min(pol.BurstBytes, math.MaxUint32>>1))
	idx := l.Attrs().Index
	qdiscs, err := dump(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return fmt.Errorf("network: list qdiscs on %s: %w", a.Veth, err)
	}
	oldLayout := slices.ContainsFunc(qdiscs, func(q netlink.Qdisc) bool {
		return q.Type() == "tbf" && q.Attrs().Parent == netlink.HANDLE_ROOT
	})
	if oldLayout {
		if err := setTBF(idx, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0), pol.IngressBytes, burst); err != nil {
			return fmt.Errorf("network: tbf on %s: %w", a.Veth, err)
		}
	} else if err := m.setIngressShaping(l, a, pol.IngressBytes, burst); err != nil {
		return err
	}
	if err := setTBF(ifb.Attrs().Index, netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0), pol.EgressBytes, burst); err != nil {
		return fmt.Errorf("network: tbf on %s: %w", ifbName, err)
	}
	if !slices.ContainsFunc(qdiscs, func(q netlink.Qdisc) bool { return q.Type() == "ingress" }) {
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscAdd(ingress); err != nil {
			return fmt.Errorf("network: ingress qdisc on %s: %w", a.Veth, err)
		}
	}
	filters, err := dump(func() ([]netlink.Filter, error) { return netlink.FilterList(l, netlink.MakeHandle(0xffff, 0)) })
	if err != nil {
		return fmt.Errorf("network: list filters on %s: %w", a.Veth, err)
	}
	if len(filters) == 0 {
		// envd's answers to the agent: a terminal match with no action
		// ends the classification (the packet passes), before the redirect.
		for _, peer := range envdPeers(a) {
			pass := &netlink.U32{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_IP},
				Sel:         &netlink.TcU32Sel{Flags: nl32Terminal, Keys: envdKeys(peer, false)},
			}
			if err := netlink.FilterAdd(pass); err != nil {
				return fmt.Errorf("network: envd filter on %s: %w", a.Veth, err)
			}
		}
		redirect := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(0xffff, 0), Priority: 2, Protocol: unix.ETH_P_ALL},
			Sel:         &netlink.TcU32Sel{Flags: nl32Terminal, Nkeys: 1, Keys: []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}}},
			Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
		}
		if err := netlink.FilterAdd(redirect); err != nil {
			return fmt.Errorf("network: redirect filter on %s: %w", a.Veth, err)
		}
	}
	return nil
}

// setIngressShaping shapes what the capsule receives: an htb root qdisc
// (1:) with two classes that do not shape (1:1, 1:2), everything in 1:2
// (the default) under a tbf (20:), except the agent's traffic to envd,
// which a filter puts in 1:1. (htb, not prio: kernels such as this
// machine's build in htb and tbf but not prio.)
func (m *Manager) setIngressShaping(l netlink.Link, a Allocation, rate uint64, burst uint32) error {
	idx := l.Attrs().Index
	qdiscs, err := dump(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return fmt.Errorf("network: list qdiscs on %s: %w", a.Veth, err)
	}
	if !slices.ContainsFunc(qdiscs, func(q netlink.Qdisc) bool { return q.Type() == "htb" && q.Attrs().Parent == netlink.HANDLE_ROOT }) {
		// htb has no change operation: added once, then kept.
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT})
		htb.Defcls = 2
		if err := netlink.QdiscReplace(htb); err != nil {
			return fmt.Errorf("network: htb qdisc on %s: %w", a.Veth, err)
		}
	}
	for _, minor := range []uint16{1, 2} {
		cl := netlink.NewHtbClass(
			netlink.ClassAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(1, 0), Handle: netlink.MakeHandle(1, minor)},
			netlink.HtbClassAttrs{Rate: unshapedBits, Ceil: unshapedBits, Buffer: 1 << 20, Cbuffer: 1 << 20, Quantum: 200000},
		)
		if err := netlink.ClassReplace(cl); err != nil {
			return fmt.Errorf("network: htb class on %s: %w", a.Veth, err)
		}
	}
	if err := setTBF(idx, netlink.MakeHandle(1, 2), netlink.MakeHandle(0x20, 0), rate, burst); err != nil {
		return fmt.Errorf("network: tbf on %s: %w", a.Veth, err)
	}
	filters, err := dump(func() ([]netlink.Filter, error) { return netlink.FilterList(l, netlink.MakeHandle(1, 0)) })
	if err != nil {
		return fmt.Errorf("network: list filters on %s: %w", a.Veth, err)
	}
	if len(filters) > 0 {
		return nil
	}
	for _, peer := range envdPeers(a) {
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(1, 0), Priority: 1, Protocol: unix.ETH_P_IP},
			Sel:         &netlink.TcU32Sel{Flags: nl32Terminal, Keys: envdKeys(peer, true)},
			ClassId:     netlink.MakeHandle(1, 1),
		}
		if err := netlink.FilterAdd(f); err != nil {
			return fmt.Errorf("network: envd filter on %s: %w", a.Veth, err)
		}
	}
	return nil
}

// envdPeers are the addresses the agent's packets to envd carry where tc
// sees them on the host end of the veth: the capsule's gateway as the
// capsule sees it (the stateless address translation, insideTable, runs
// in the netdev egress hook before the root qdisc, and in the ingress
// hook after tc's ingress filters), and the host-side address (with
// HostSideAddress, where nothing is translated).
func envdPeers(a Allocation) []netip.Addr {
	if a.Host == InsideGateway {
		return []netip.Addr{a.Host}
	}
	return []netip.Addr{InsideGateway, a.Host}
}

// unshapedBits is the rate (bits/s) of the htb classes that do not shape
// (their 1 MiB buffer is explicit: the library's default overflows to a
// zero burst at this rate, which made htb throttle every packet).
const unshapedBits = 100e9

// envdKeys match (u32, from the IPv4 header; a header with options does
// not match) TCP between the host (peer, as the packet carries it) and
// the capsule's envd port: toEnvd from peer to the envd port, otherwise
// from the envd port to peer.
func envdKeys(host netip.Addr, toEnvd bool) []netlink.TcU32Key {
	h := binary.BigEndian.Uint32(host.AsSlice())
	keys := []netlink.TcU32Key{
		{Mask: 0x0f000000, Val: 0x05000000, Off: 0}, // IHL 5: no options
		{Mask: 0x00ff0000, Val: uint32(unix.IPPROTO_TCP) << 16, Off: 8},
	}
	if toEnvd {
		return append(keys,
			netlink.TcU32Key{Mask: 0xffffffff, Val: h, Off: 12},
			netlink.TcU32Key{Mask: 0x0000ffff, Val: runtime.EnvdPort, Off: 20})
	}
	return append(keys,
		netlink.TcU32Key{Mask: 0xffffffff, Val: h, Off: 16},
		netlink.TcU32Key{Mask: 0xffff0000, Val: runtime.EnvdPort << 16, Off: 20})
}

func setTBF(link int, parent, handle uint32, rate uint64, burst uint32) error {
	return netlink.QdiscReplace(&netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link, Handle: handle, Parent: parent},
		Rate:       rate,
		Buffer:     netlink.Xmittime(rate, burst),
		Limit:      uint32(min(max(rate/20, 256<<10), math.MaxUint32>>1)),
	})
}

// clearRates removes what setRates put on the capsule's host-side veth:
// the ingress qdisc (with the filter redirecting to the IFB) and the root
// tbf. A missing veth or qdisc is fine.
func clearRates(veth string) error {
	l, err := netlink.LinkByName(veth)
	if err != nil {
		return nil
	}
	qdiscs, err := dump(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return fmt.Errorf("network: list qdiscs on %s: %w", veth, err)
	}
	var errs []error
	for _, q := range qdiscs {
		a := q.Attrs()
		if a.LinkIndex != l.Attrs().Index || (a.Parent != netlink.HANDLE_INGRESS && a.Parent != netlink.HANDLE_ROOT) {
			continue
		}
		if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("network: delete %s qdisc on %s: %w", q.Type(), veth, err))
		}
	}
	return errors.Join(errs...)
}

// deleteIFB removes the capsule's IFB device (missing is fine).
func deleteIFB(key string) error {
	l, err := netlink.LinkByName(IFBPrefix + key)
	if err != nil {
		return nil
	}
	return linkDel(l)
}

// linkDelTimeout bounds one link deletion (a variable for tests).
var linkDelTimeout = 30 * time.Second

// linkDel deletes a link, waiting at most linkDelTimeout for the kernel:
// a deletion the kernel does not finish must not block a capsule's
// Destroy (and the agent) forever. The error says so; the device is left
// for Sweep, and the goroutine waiting on the kernel stays behind.
func linkDel(l netlink.Link) error {
	name := l.Attrs().Name
	done := make(chan error, 1)
	go func() { done <- netlink.LinkDel(l) }()
	t := time.NewTimer(linkDelTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("network: delete %s: %w", name, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("network: delete %s: the kernel did not finish it within %v (left for Sweep)", name, linkDelTimeout)
	}
}

// sweepIFBs removes IFB devices of keys keep rejects whose veth is gone
// (a veth that still exists may belong to another manager's capsule).
func sweepIFBs(keep func(key string) bool) error {
	links, err := dump(netlink.LinkList)
	if err != nil {
		return fmt.Errorf("network: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() != "ifb" || !strings.HasPrefix(name, IFBPrefix) || keep(name[len(IFBPrefix):]) {
			continue
		}
		if _, err := netlink.LinkByName(VethPrefix + name[len(IFBPrefix):]); err != nil {
			if err := linkDel(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// nl32Terminal is TC_U32_TERMINAL.
const nl32Terminal = 1

// dump runs a netlink dump again while the kernel reports it interrupted
// (NLM_F_DUMP_INTR: links, qdiscs or filters changed while it ran, as when
// other capsules are set up or torn down at the same time); the results
// of an interrupted dump may be incomplete.
func dump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 10 {
		if v, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
