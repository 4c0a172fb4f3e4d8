// Package network gives each capsule its own network namespace, joined to
// the host by a veth pair, with outbound NAT and a firewall written through
// nftables (github.com/google/nftables).
//
// Addressing: the capsule subnet (default 10.200.0.0/16) is cut into /30
// blocks; block i gives the host end of the veth (host-side name "wr<key>")
// the address .1 and the capsule, as the host sees it, the address .2.
// Inside, every capsule sees the same eth0 address (InsideAddr,
// 169.254.0.21/30) and gateway (InsideGateway, 169.254.0.22); a stateless
// netdev table in the capsule's namespace translates (inside.go). The
// netns is bind-mounted at /run/netns/wrenn-<key>.
//
// Firewall (table "ip wrenn", owned entirely by this package):
//   - input: packets from the capsule subnet reach host sockets only as
//     replies (ct state established,related) and as DNS queries (UDP/TCP
//     53) to a gateway address on a capsule veth, where the DNS forwarder
//     listens; everything else from a capsule to the host is dropped.
//   - forward: replies pass in both directions; a new flow from a capsule
//     jumps (by its veth and source address) to the capsule's own chain
//     "c-<key>": always-blocked destinations (this network, loopback,
//     link-local with 169.254.169.254, multicast, the capsule subnet) are
//     dropped, then private ranges unless the policy's allow_private set
//     "p-<key>" opens them, then with allow_internet=false everything;
//     otherwise the policy: resolver ports (53, 853) dropped when domain
//     rules exist, the allow interval set "a-<key>" and the DNS-resolved
//     timeout set "r-<key>" accepted, the deny interval set "d-<key>"
//     dropped, then the default (drop when deny_out has 0.0.0.0/0). Every
//     rule counts; drop rules carry their rule name as user data.
//     Anything else from the capsule subnet, and any new flow into it, is
//     dropped.
//   - postrouting: masquerade capsule traffic leaving through a non-capsule
//     interface.
//
// DNS: each capsule resolves through the forwarder on its gateway (dns.go),
// which answers per the capsule's policy and feeds "r-<key>".
//
// Rate limits (tc): tbf on the host veth shapes what the capsule receives;
// the veth's ingress is redirected to an IFB device "wb<key>" whose tbf
// shapes what it sends (policy.go).
//
// IPv4 only: IPv6 is disabled on both veth ends and inside the namespace.
//
// Per-capsule rules, chains, sets and IFB devices carry the capsule key and
// are removed with the capsule; Sweep removes those whose key is not kept,
// so nothing survives an agent crash.
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Names used on the host.
const (
	// TableName is the default nftables table; NetnsPrefix the default prefix
	// of namespace names.
	TableName    = "wrenn"
	NetnsPrefix  = "wrenn-"
	VethPrefix   = "wr"
	netnsDir     = "/run/netns"
	capsuleChain = "capsules"
	baseTag      = "wrenn-base"
)

// Config configures a Manager.
type Config struct {
	// Subnet is the IPv4 range capsules get their /30 blocks from; it must
	// lie inside one of the blocked private ranges (default 10.200.0.0/16).
	Subnet netip.Prefix
	// MTU of the veth pair (0 = 1500).
	MTU int
	// Table is the nftables table (family ip) this manager owns (default
	// "wrenn"). Two managers must not share a table.
	Table string
	// NetnsPrefix prefixes the names of the namespaces in /run/netns
	// (default "wrenn-"); it tells this manager's namespaces apart.
	NetnsPrefix string
	// DNSUpstream are the resolvers ("host:port" or "host") the capsules'
	// DNS forwarder asks; empty means the host's resolvers from
	// /etc/resolv.conf.
	DNSUpstream []string
	// NoDNS disables the per-capsule DNS forwarder (capsules then resolve
	// with whatever their image's resolv.conf says, through the policy).
	NoDNS bool
	// NoDenialLog turns off per-destination logging of dropped
	// connections (nflog.go); the drop counters stay.
	NoDenialLog bool
	// HostSideAddress gives each namespace's eth0 the capsule's host-side
	// address (Allocation.Guest, default route via Allocation.Host) instead
	// of InsideAddr and the stateless translation: for drivers whose
	// capsule sits behind the namespace (the microVM driver's tap), which
	// give it InsideAddr themselves.
	HostSideAddress bool
}

// The address every capsule sees on its eth0, and its gateway: the same
// in every capsule on every host (a /30 of link-local space, as the seed's
// microVMs had), so a capsule moved or restored elsewhere keeps its address
// and its listening sockets. The host knows each capsule by its
// per-capsule pair (Allocation.Host, Allocation.Guest); the capsule's own
// namespace translates between the two on eth0 (insideTable).
var (
	InsideAddr    = netip.MustParseAddr("169.254.0.21")
	InsideGateway = netip.MustParseAddr("169.254.0.22")
)

const insideBits = 30

// Allocation is one capsule's network. Host and Guest are the host-side
// pair (the veth's address and the capsule's address as the host, the
// agent and the port proxy reach it); inside, the capsule sees InsideAddr
// and InsideGateway.
type Allocation struct {
	Key   string     `json:"key"`
	Index int        `json:"index"`
	Host  netip.Addr `json:"host"`
	Guest netip.Addr `json:"guest"`
	Veth  string     `json:"veth"`
	Netns string     `json:"netns"` // path of the bind-mounted namespace
}

// Manager creates and removes capsule networks. Safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	used  map[int]string // index -> key
	next  int
	nft   sync.Mutex // serializes nftables transactions
	table *nftables.Table

	policies map[string]*policyState             // key -> enforced policy (under mu)
	dropBase map[string]map[string]uint64        // key -> drops counted before the last chain rewrite (under mu)
	resolved map[string]map[netip.Addr]time.Time // key -> address -> expiry of its element in r-<key> (under mu)
	dns      *forwarder                          // nil when Config.NoDNS is set
	nflog    *nflogReader                        // nil: no per-destination denial logging
	den      denials
	labels   map[string]string // key -> capsule id, for logs (under mu)
}

// New prepares the host (IP forwarding, the nftables table) and returns a Manager.
func New(cfg Config, log *slog.Logger) (*Manager, error) {
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("10.200.0.0/16")
	}
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 28 {
		return nil, fmt.Errorf("network: subnet %s: need IPv4, /28 or larger", cfg.Subnet)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if cfg.Table == "" {
		cfg.Table = TableName
	}
	if cfg.NetnsPrefix == "" {
		cfg.NetnsPrefix = NetnsPrefix
	}
	m := &Manager{
		cfg: cfg.normalized(), log: log, used: map[int]string{}, policies: map[string]*policyState{}, dropBase: map[string]map[string]uint64{},
		resolved: map[string]map[netip.Addr]time.Time{}, labels: map[string]string{}, den: denials{logs: map[string]*denialLog{}},
	}
	if !cfg.NoDNS {
		up, err := upstreams(cfg.DNSUpstream)
		if err != nil {
			if len(cfg.DNSUpstream) > 0 {
				return nil, err
			}
			// No host resolvers: capsules get SERVFAIL until an upstream
			// is configured.
			log.Warn("network: the capsules' DNS forwarder has no upstream", "err", err)
		}
		m.dns = newForwarder(m, up, log)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return nil, fmt.Errorf("network: enable ip_forward: %w", err)
	}
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := m.ensureTable(); err != nil {
		return nil, err
	}
	if !cfg.NoDenialLog {
		r, err := m.startNFLOG(logGroup(cfg.Table))
		if err != nil {
			// Another process holds the group: drops are still counted.
			log.Warn("network: per-destination denial logging off", "err", err)
		}
		m.nflog = r
	}
	return m, nil
}

func (c Config) normalized() Config {
	c.Subnet = c.Subnet.Masked()
	return c
}

func (m *Manager) capacity() int { return 1 << (32 - m.cfg.Subnet.Bits() - 2) }

func (m *Manager) addrs(index int) (host, guest netip.Addr) {
	base := m.cfg.Subnet.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(index) * 4
	h := [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v + 1)}
	g := [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v + 2)}
	return netip.AddrFrom4(h), netip.AddrFrom4(g)
}

func (m *Manager) allocate(key string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.capacity()
	for i := 0; i < n; i++ {
		idx := (m.next + i) % n
		if _, ok := m.used[idx]; !ok {
			m.used[idx] = key
			m.next = idx + 1
			return idx, nil
		}
	}
	return 0, errors.New("network: subnet exhausted")
}

func (m *Manager) release(index int, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used[index] == key {
		delete(m.used, index)
	}
}

// Adopt marks an allocation made by an earlier Manager as in use (recovery).
func (m *Manager) Adopt(a Allocation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.used[a.Index]; ok && k != a.Key {
		return fmt.Errorf("network: index %d already used by %s", a.Index, k)
	}
	m.used[a.Index] = a.Key
	return nil
}

// Setup creates the namespace, the veth pair, the firewall chain, the rate
// limits and the DNS forwarder of key, with the given policy (nil = the
// defaults). On error everything it made is removed.
func (m *Manager) Setup(key string, allowInternet bool, policy *runtime.NetworkPolicy) (a Allocation, err error) {
	return m.SetupWith(key, allowInternet, policy, nil)
}

// SetupWith is Setup with the namespace made by newNetns, which must
// bind-mount a new network namespace at path (the container driver makes
// it inside the capsule's user namespace, so that the capsule owns it);
// nil makes it as Setup does. The rest (veth, addresses, rules) is done
// from the host as for any namespace.
func (m *Manager) SetupWith(key string, allowInternet bool, policy *runtime.NetworkPolicy, newNetns func(path string) error) (a Allocation, err error) {
	return m.setup(key, allowInternet, policy, newNetns, false)
}

// SetupHeld is SetupWith for a capsule made ahead of its use (a warm-pool
// capsule): its chain, sets and rate limits are written for allowInternet
// and policy, but its dispatch rule is not, so it has no egress at all
// (the forward chain drops flows no capsule rule accepted) until a
// SetPolicy releases it. A SetPolicy with the same policy then adds that
// one rule (≈ 0.1 ms) instead of rewriting the chain (10-20 ms).
func (m *Manager) SetupHeld(key string, allowInternet bool, policy *runtime.NetworkPolicy, newNetns func(path string) error) (a Allocation, err error) {
	return m.setup(key, allowInternet, policy, newNetns, true)
}

func (m *Manager) setup(key string, allowInternet bool, policy *runtime.NetworkPolicy, newNetns func(path string) error, hold bool) (a Allocation, err error) {
	if err := policy.Validate(); err != nil {
		return a, err
	}
	idx, err := m.allocate(key)
	if err != nil {
		return a, err
	}
	host, guest := m.addrs(idx)
	a = Allocation{
		Key: key, Index: idx, Host: host, Guest: guest,
		Veth:  VethPrefix + key,
		Netns: m.NetnsPath(key),
	}
	defer func() {
		if err != nil {
			if terr := m.Teardown(a); terr != nil {
				m.log.Warn("network: cleanup after failed setup", "key", key, "err", terr)
			}
		}
	}()
	if err := EnsureNetnsDir(); err != nil {
		return a, err
	}
	if newNetns != nil {
		if err := newNetns(a.Netns); err != nil {
			return a, fmt.Errorf("network: create netns %s: %w", a.Netns, err)
		}
	} else if err := m.createNetns(filepath.Base(a.Netns)); err != nil {
		return a, err
	}
	if err := m.link(a); err != nil {
		return a, err
	}
	if err := m.setPolicy(a, allowInternet, policy, hold); err != nil {
		return a, err
	}
	return a, nil
}

func (m *Manager) createNetns(name string) error {
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("network: current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		// The thread is stuck in the new namespace: leave it locked so Go
		// discards it when this goroutine ends.
		return fmt.Errorf("network: restore netns: %w", serr)
	}
	goruntime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("network: create netns %s: %w", name, err)
	}
	return ns.Close()
}

func (m *Manager) link(a Allocation) error {
	ns, err := netns.GetFromPath(a.Netns)
	if err != nil {
		return fmt.Errorf("network: open netns: %w", err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: a.Veth, MTU: m.cfg.MTU, TxQLen: 1000},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("network: add veth %s: %w", a.Veth, err)
	}
	hostLink, err := netlink.LinkByName(a.Veth)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	// IPv4 only: without IPv6 on either end there is no link-local path
	// around the (ip family) firewall to host services on [::].
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+a.Veth+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: disable ipv6 on %s: %w", a.Veth, err)
	}
	if err := inNetns(ns, func() error { return errors.Join(disableIPv6(), allowLowPorts()) }); err != nil {
		return err
	}
	// Strict reverse-path filtering: the host veth accepts only the
	// capsule's translated source address, so a capsule that undoes its
	// own translation (or forges any other source) reaches nothing.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+a.Veth+"/rp_filter", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("network: rp_filter on %s: %w", a.Veth, err)
	}
	if err := netlink.AddrAdd(hostLink, &netlink.Addr{IPNet: ipnet(a.Host, 30)}); err != nil {
		return fmt.Errorf("network: host addr: %w", err)
	}
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("network: host link up: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network: netlink in netns: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("network: lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("network: lo up: %w", err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("network: eth0: %w", err)
	}
	if m.cfg.HostSideAddress {
		// The namespace is a router for something inside it (a microVM
		// behind a tap, which itself sees InsideAddr): eth0 holds the
		// capsule's host-side address, routed through the host end.
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(a.Guest, 30)}); err != nil {
			return fmt.Errorf("network: guest addr: %w", err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			return fmt.Errorf("network: eth0 up: %w", err)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(a.Host.AsSlice())}); err != nil {
			return fmt.Errorf("network: default route: %w", err)
		}
		return nil
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(InsideAddr, insideBits)}); err != nil {
		return fmt.Errorf("network: guest addr: %w", err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("network: eth0 up: %w", err)
	}
	// Nothing answers ARP for the translated addresses: each side knows
	// the other's MAC for good.
	if err := h.NeighAdd(&netlink.Neigh{
		LinkIndex: eth.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.IP(InsideGateway.AsSlice()), HardwareAddr: hostLink.Attrs().HardwareAddr,
	}); err != nil {
		return fmt.Errorf("network: gateway neighbour: %w", err)
	}
	if err := netlink.NeighAdd(&netlink.Neigh{
		LinkIndex: hostLink.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.IP(a.Guest.AsSlice()), HardwareAddr: eth.Attrs().HardwareAddr,
	}); err != nil {
		return fmt.Errorf("network: capsule neighbour: %w", err)
	}
	if err := m.insideTable(a); err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(InsideGateway.AsSlice())}); err != nil {
		return fmt.Errorf("network: default route: %w", err)
	}
	return nil
}

// allowLowPorts lets every process of the namespace bind ports below 1024:
// capsules run in their own user namespace, whose root has no
// CAP_NET_BIND_SERVICE over this namespace (it belongs to the host's user
// namespace), and a server on port 80 must still work in a capsule.
func allowLowPorts() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("0"), 0o644); err != nil {
		return fmt.Errorf("network: ip_unprivileged_port_start: %w", err)
	}
	return nil
}

// disableIPv6 turns IPv6 off in the calling thread's network namespace
// (a no-op on hosts without IPv6).
func disableIPv6() error {
	for _, f := range []string{"all", "default", "lo"} {
		err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("network: disable ipv6 in netns: %w", err)
		}
	}
	return nil
}

// inNetns runs f on a thread switched into ns.
func inNetns(ns netns.NsHandle, f func() error) error {
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("network: current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("network: enter netns: %w", err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go discards it when the goroutine ends.
		return fmt.Errorf("network: restore netns: %w", err)
	}
	goruntime.UnlockOSThread()
	return ferr
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// Teardown removes the capsule's rules, veth and namespace. Missing pieces
// are not errors, so Teardown is idempotent.
func (m *Manager) Teardown(a Allocation) error {
	var errs []error
	if m.dns != nil {
		m.dns.detach(a.Key)
	}
	if err := m.deleteRules(func(tag string) bool { return tag == a.Key }); err != nil {
		errs = append(errs, err)
	}
	if err := m.deleteCapsuleObjects(func(key string) bool { return key == a.Key }); err != nil {
		errs = append(errs, err)
	}
	if err := m.deleteAddrTables(func(key string) bool { return key == a.Key }); err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	delete(m.policies, a.Key)
	delete(m.dropBase, a.Key)
	delete(m.resolved, a.Key)
	delete(m.labels, a.Key)
	m.mu.Unlock()
	m.den.mu.Lock()
	delete(m.den.logs, a.Key)
	m.den.mu.Unlock()
	// Rate limiting goes first, in the reverse order of setRates: the
	// veth's redirect filter and qdiscs, then the IFB they fed, then the
	// veth. Deleting the veth first (as before) left the IFB to be deleted
	// while the mirred action that held it was still being destroyed
	// with the veth's ingress qdisc; once (after a gVisor capsule, whose
	// netstack keeps the veth busy to the end) that RTM_DELLINK never
	// returned and held up every later link change of the host.
	if err := clearRates(a.Veth); err != nil {
		errs = append(errs, err)
	}
	if err := deleteIFB(a.Key); err != nil {
		errs = append(errs, err)
	}
	if l, err := netlink.LinkByName(a.Veth); err == nil {
		if err := linkDel(l); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNetns(a.Netns); err != nil {
		errs = append(errs, err)
	}
	m.release(a.Index, a.Key)
	return errors.Join(errs...)
}

func deleteNetns(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(filepath.Base(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: delete netns %s: %w", path, err)
	}
	return nil
}

// SetInternet allows or forbids the capsule's egress, keeping its policy.
func (m *Manager) SetInternet(a Allocation, allow bool) error {
	var pol *runtime.NetworkPolicy
	if st := m.policy(a.Key); st != nil {
		pol = st.source
	}
	return m.SetPolicy(a, allow, pol)
}

// Sweep removes the per-capsule rules of every key keep rejects, and the
// namespaces (with their veth pairs, which die with the namespace) of the
// given orphan keys. Used after a crash.
func (m *Manager) Sweep(keep func(key string) bool, orphans []string) error {
	var errs []error
	if err := m.deleteRules(func(tag string) bool { return tag != baseTag && !keep(tag) }); err != nil {
		errs = append(errs, err)
	}
	if err := m.deleteCapsuleObjects(func(key string) bool { return !keep(key) }); err != nil {
		errs = append(errs, err)
	}
	if err := m.deleteAddrTables(func(key string) bool { return !keep(key) }); err != nil {
		errs = append(errs, err)
	}
	for _, key := range orphans {
		if keep(key) {
			continue
		}
		if err := deleteNetns(m.NetnsPath(key)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := sweepIFBs(keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close stops the DNS forwarder's listeners (the agent is going away;
// capsules, rules and namespaces stay for the next Manager to adopt).
func (m *Manager) Close() {
	if m.dns != nil {
		m.dns.close()
	}
	if m.nflog != nil {
		m.nflog.close()
	}
}

// RemoveTable deletes the manager's nftables table (when the host stops
// running capsules, and in tests). Capsules still running lose their NAT.
func (m *Manager) RemoveTable() error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	c.DelTable(m.table)
	if err := c.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: delete table: %w", err)
	}
	m.nft.Unlock()
	err = m.deleteAddrTables(func(string) bool { return true })
	m.nft.Lock()
	return err
}

// RuleCount returns the number of rules in the wrenn table (for leak tests
// and diagnostics).
func (m *Manager) RuleCount() (int, error) {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return 0, err
	}
	n := 0
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return 0, err
	}
	for _, ch := range chains {
		if ch.Table.Name != m.cfg.Table {
			continue
		}
		rules, err := c.GetRules(m.table, ch)
		if err != nil {
			return 0, err
		}
		n += len(rules)
	}
	return n, nil
}

// NetnsPath is where the namespace of key is bind-mounted.
func (m *Manager) NetnsPath(key string) string {
	return filepath.Join(netnsDir, m.cfg.NetnsPrefix+key)
}

// Namespaces lists this manager's network namespaces present on the host.
func (m *Manager) Namespaces() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), m.cfg.NetnsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (m *Manager) deleteRules(match func(tag string) bool) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	rules, err := c.GetRules(m.table, &nftables.Chain{Name: capsuleChain, Table: m.table})
	if err != nil {
		return fmt.Errorf("network: list rules: %w", err)
	}
	n := 0
	for _, r := range rules {
		if match(string(r.UserData)) {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("network: delete rule: %w", err)
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: delete rules: %w", err)
	}
	return nil
}

// ensureTable creates table ip wrenn and its chains and base rules if they
// are not there yet; an existing table (from before an agent restart) is
// kept with its per-capsule rules.
func (m *Manager) ensureTable() error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	m.table = &nftables.Table{Name: m.cfg.Table, Family: nftables.TableFamilyIPv4}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("network: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == m.cfg.Table {
			chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
			if err != nil {
				return fmt.Errorf("network: list chains: %w", err)
			}
			for _, ch := range chains {
				if ch.Table.Name == m.cfg.Table && ch.Name == "forward" {
					return nil
				}
			}
			// Half-made table: start over.
			c.DelTable(m.table)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("network: reset table: %w", err)
			}
		}
	}
	subnet := m.cfg.Subnet
	c.AddTable(m.table)
	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{Name: "input", Table: m.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	forward := c.AddChain(&nftables.Chain{Name: "forward", Table: m.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: m.table, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	caps := c.AddChain(&nftables.Chain{Name: capsuleChain, Table: m.table})
	_ = caps
	add := func(ch *nftables.Chain, e ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: m.table, Chain: ch, Exprs: e, UserData: []byte(baseTag)})
	}
	fromCapsules := matchAddr(12, subnet)
	// input: only replies from capsules reach host sockets, and DNS
	// queries to the forwarder on the capsule's gateway address.
	add(input, cat(fromCapsules, established(), verdict(expr.VerdictAccept))...)
	if !m.cfg.NoDNS {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			add(input, cat(fromCapsules, matchIfname(expr.MetaKeyIIFNAME, VethPrefix, true, expr.CmpOpEq), matchAddr(16, subnet),
				ownGateway(), matchPort(proto, 53), verdict(expr.VerdictAccept))...)
		}
	}
	add(input, cat(fromCapsules, verdict(expr.VerdictDrop))...)
	// forward: replies in both directions pass; new flows from a capsule
	// go through its own chain (always-blocked ranges first, then the
	// policy), dispatched by the capsules chain.
	add(forward, cat(matchAddr(16, subnet), established(), verdict(expr.VerdictAccept))...)
	add(forward, cat(fromCapsules, established(), verdict(expr.VerdictAccept))...)
	add(forward, cat(fromCapsules, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: capsuleChain}})...)
	add(forward, cat(fromCapsules, verdict(expr.VerdictDrop))...)
	// Nothing from outside may open flows into capsules.
	add(forward, cat(matchAddr(16, subnet), verdict(expr.VerdictDrop))...)
	// postrouting: masquerade what leaves through a non-capsule interface.
	add(post, cat(fromCapsules, matchIfname(expr.MetaKeyOIFNAME, VethPrefix, true, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})...)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: create table: %w", err)
	}
	return nil
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// matchAddr matches the IPv4 source (offset 12) or destination (16) address
// against a prefix.
func matchAddr(offset uint32, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// matchIfname compares an interface name, or only its first bytes when
// prefix is set.
func matchIfname(key expr.MetaKey, name string, prefix bool, op expr.CmpOp) []expr.Any {
	data := []byte(name)
	if !prefix {
		data = append(data, 0)
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ownGateway matches packets addressed to an address of the interface they
// came in on (nft: fib daddr . iif type local): a capsule's DNS query to
// its own gateway, never to a neighbour's gateway (whose forwarder would
// answer with the neighbour's policy).
func ownGateway() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}
