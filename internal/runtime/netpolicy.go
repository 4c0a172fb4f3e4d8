package runtime

import (
	"fmt"
	"net/netip"
	"strings"
)

// Network policy bounds and defaults (one value, read by the agent, the
// drivers and, through the agent's RPC, the API layer).
const (
	// MaxNetworkRules bounds allow_out + deny_out + allow_private together.
	MaxNetworkRules = 1000
	// DefaultEgressMBps and DefaultIngressMBps are the per-capsule rate
	// limits in megabytes per second when a policy does not set them;
	// DefaultBurstMB the burst (the seed's Firecracker defaults).
	DefaultEgressMBps  = 200
	DefaultIngressMBps = 200
	DefaultBurstMB     = 100
	// MaxRateMBps bounds a configured rate (10 GB/s).
	MaxRateMBps = 10000
)

// NetworkPolicy is a capsule's outbound network policy. A nil policy on a
// Spec means the defaults: internet per AllowInternet, default rate limits.
//
// Entries of AllowOut and DenyOut are IPv4 CIDRs ("203.0.113.0/24"),
// single IPv4 addresses, or domain names ("example.com" matches that name
// only; "*.example.com" matches every name below it, not the name itself).
// A destination matched by an allow rule is allowed even if a deny rule
// also matches ("deny 0.0.0.0/0, allow these" is the allow-list form).
// Domain names in AllowOut need DenyOut to contain "0.0.0.0/0": a domain
// allow-list only means something when everything else is denied. Then
// the capsule's DNS forwarder answers only allowed names, addresses
// never resolved for an allowed name are unreachable, and outside
// resolvers (port 53, DNS over TLS on 853) are unreachable. DNS over HTTPS
// looks like any HTTPS: it is blocked only because its server is not on the
// allow-list. Domain names in DenyOut make the forwarder refuse those names;
// a capsule that knows an address can still connect to it unless an
// address rule or a default deny stops it.
//
// Whatever the policy, the host, other capsules, loopback, link-local
// (169.254.0.0/16, with the cloud metadata address) and multicast are
// unreachable; the private ranges (RFC 1918, CGNAT 100.64.0.0/10,
// 198.18.0.0/15, 192.0.0.0/24) are unreachable unless AllowPrivate lists a
// range. Capsules are IPv4-only.
type NetworkPolicy struct {
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
	// AllowPrivate lists private CIDRs the capsule may reach. Only the
	// control plane sets it (operator-approved ranges of BYOC teams); users
	// never do.
	AllowPrivate []string `json:"allow_private,omitempty"`
	// EgressMBps and IngressMBps are rate limits in megabytes per second
	// (0 = default); BurstMB the burst in megabytes (0 = default).
	EgressMBps  int `json:"egress_mbps,omitempty"`
	IngressMBps int `json:"ingress_mbps,omitempty"`
	BurstMB     int `json:"burst_mb,omitempty"`
}

// NameRule is a domain rule: Name without the trailing dot, lower case;
// Wildcard when it was given as "*.Name".
type NameRule struct {
	Name     string
	Wildcard bool
}

// Matches reports whether the fully qualified or bare name q matches.
func (r NameRule) Matches(q string) bool {
	q = strings.TrimSuffix(strings.ToLower(q), ".")
	if r.Wildcard {
		return strings.HasSuffix(q, "."+r.Name)
	}
	return q == r.Name
}

func (r NameRule) String() string {
	if r.Wildcard {
		return "*." + r.Name
	}
	return r.Name
}

// CompiledPolicy is a validated NetworkPolicy in the form the network layer
// enforces.
type CompiledPolicy struct {
	AllowNets, DenyNets []netip.Prefix
	AllowNames          []NameRule
	DenyNames           []NameRule
	AllowPrivate        []netip.Prefix
	// DefaultDeny is set when DenyOut contains 0.0.0.0/0.
	DefaultDeny bool
	// EgressBytes and IngressBytes are rates in bytes per second; BurstBytes
	// the burst in bytes (defaults filled in).
	EgressBytes, IngressBytes, BurstBytes uint64
}

// DomainAllowList reports whether a domain allow-list is in force.
func (c *CompiledPolicy) DomainAllowList() bool { return c.DefaultDeny && len(c.AllowNames) > 0 }

// HasNames reports whether any domain rule exists.
func (c *CompiledPolicy) HasNames() bool { return len(c.AllowNames)+len(c.DenyNames) > 0 }

// NameAllowed reports whether the forwarder may answer name for this
// policy, and the rule that decided ("" when no rule matched).
func (c *CompiledPolicy) NameAllowed(name string) (bool, string) {
	for _, r := range c.AllowNames {
		if r.Matches(name) {
			return true, "allow_out " + r.String()
		}
	}
	for _, r := range c.DenyNames {
		if r.Matches(name) {
			return false, "deny_out " + r.String()
		}
	}
	if c.DomainAllowList() {
		return false, "deny_out 0.0.0.0/0 (domain allow-list)"
	}
	return true, ""
}

// Compile validates p (nil = the default policy) and returns its enforced
// form. Errors wrap ErrInvalidSpec and name the field and entry, e.g.
// `network.allow_out[2] "exa mple.com": ...`.
func (p *NetworkPolicy) Compile() (*CompiledPolicy, error) {
	c := &CompiledPolicy{}
	if p == nil {
		p = &NetworkPolicy{}
	}
	if n := len(p.AllowOut) + len(p.DenyOut) + len(p.AllowPrivate); n > MaxNetworkRules {
		return nil, fmt.Errorf("%w: network: %d rules, at most %d", ErrInvalidSpec, n, MaxNetworkRules)
	}
	for i, s := range p.AllowOut {
		pf, name, err := parseRule(s)
		if err != nil {
			return nil, fmt.Errorf("%w: network.allow_out[%d] %q: %w", ErrInvalidSpec, i, s, err)
		}
		if name != nil {
			c.AllowNames = append(c.AllowNames, *name)
		} else {
			c.AllowNets = append(c.AllowNets, pf)
		}
	}
	for i, s := range p.DenyOut {
		pf, name, err := parseRule(s)
		if err != nil {
			return nil, fmt.Errorf("%w: network.deny_out[%d] %q: %w", ErrInvalidSpec, i, s, err)
		}
		switch {
		case name != nil:
			c.DenyNames = append(c.DenyNames, *name)
		case pf.Bits() == 0:
			c.DefaultDeny = true
		default:
			c.DenyNets = append(c.DenyNets, pf)
		}
	}
	for i, s := range p.AllowPrivate {
		pf, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: network.allow_private[%d] %q: %w", ErrInvalidSpec, i, s, err)
		}
		c.AllowPrivate = append(c.AllowPrivate, pf)
	}
	if len(c.AllowNames) > 0 && !c.DefaultDeny {
		return nil, fmt.Errorf("%w: network.allow_out: domain names need deny_out to contain 0.0.0.0/0 (otherwise every destination is allowed anyway)", ErrInvalidSpec)
	}
	rate := func(field string, v, def int) (uint64, error) {
		switch {
		case v == 0:
			v = def
		case v < 0 || v > MaxRateMBps:
			return 0, fmt.Errorf("%w: network.%s %d: must be between 1 and %d", ErrInvalidSpec, field, v, MaxRateMBps)
		}
		return uint64(v) << 20, nil
	}
	var err error
	if c.EgressBytes, err = rate("egress_mbps", p.EgressMBps, DefaultEgressMBps); err != nil {
		return nil, err
	}
	if c.IngressBytes, err = rate("ingress_mbps", p.IngressMBps, DefaultIngressMBps); err != nil {
		return nil, err
	}
	if c.BurstBytes, err = rate("burst_mb", p.BurstMB, DefaultBurstMB); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate reports whether p compiles.
func (p *NetworkPolicy) Validate() error {
	_, err := p.Compile()
	return err
}

func parseRule(s string) (netip.Prefix, *NameRule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, nil, fmt.Errorf("empty rule")
	}
	if strings.ContainsAny(s, ":/") || isIPv4ish(s) {
		pf, err := parsePrefix(s)
		return pf, nil, err
	}
	r, err := parseName(s)
	if err != nil {
		return netip.Prefix{}, nil, err
	}
	return netip.Prefix{}, &r, nil
}

// isIPv4ish reports whether s is made of digits and dots only (so it is
// meant as an address, never a name).
func isIPv4ish(s string) bool {
	return strings.Trim(s, "0123456789.") == ""
}

func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var pf netip.Prefix
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return pf, fmt.Errorf("not a valid CIDR")
		}
		pf = p
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pf, fmt.Errorf("not a valid IP address")
		}
		pf = netip.PrefixFrom(a, a.BitLen())
	}
	if !pf.Addr().Is4() {
		return pf, fmt.Errorf("IPv6 is not supported: capsules are IPv4-only")
	}
	return pf.Masked(), nil
}

func parseName(s string) (NameRule, error) {
	r := NameRule{}
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		r.Wildcard = true
		s = rest
	}
	if len(s) == 0 || len(s) > 253 {
		return r, fmt.Errorf("not a CIDR, IP address or domain name")
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return r, fmt.Errorf("a domain name needs at least two labels")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return r, fmt.Errorf("empty or over-long label in domain name")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return r, fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, ch := range l {
			if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') && ch != '-' && ch != '_' {
				return r, fmt.Errorf("invalid character %q in domain name (wildcards only as a leading \"*.\")", ch)
			}
		}
	}
	r.Name = s
	return r, nil
}
