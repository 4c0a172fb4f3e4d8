package webhooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// ErrForbiddenAddress is a webhook URL (or an address it resolves to) in
// a range the sender refuses.
var ErrForbiddenAddress = errors.New("forbidden address")

// Guard decides which addresses the sender may reach. With AllowPrivate
// (wrenn server --webhook-allow-private) it allows everything; otherwise
// it refuses loopback, link-local, private (RFC 1918, unique local, CGNAT),
// unspecified, multicast and the host's own interface addresses. The check
// runs on the URL when it is saved and again on the address actually
// dialled at every delivery, so a name that later resolves to a refused
// address (DNS rebinding) is still refused.
type Guard struct {
	AllowPrivate bool
	// LocalAddrs lists the host's own addresses (default: its interfaces).
	LocalAddrs func() []netip.Addr
}

var extraForbidden = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),  // CGNAT
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64 (can embed a private v4)
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("::ffff:0:0/96"),  // v4-mapped (checked unmapped too)
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("255.255.255.255/32"),
}

// CheckAddr reports whether a may be dialled.
func (g *Guard) CheckAddr(a netip.Addr) error {
	if g.AllowPrivate {
		return nil
	}
	a = a.WithZone("")
	u := a.Unmap()
	if u.IsLoopback() || u.IsPrivate() || u.IsLinkLocalUnicast() || u.IsLinkLocalMulticast() ||
		u.IsInterfaceLocalMulticast() || u.IsMulticast() || u.IsUnspecified() {
		return fmt.Errorf("%w: %s is loopback, link-local, private or not unicast", ErrForbiddenAddress, a)
	}
	for _, p := range extraForbidden {
		if p.Contains(u) || (a.Is6() && !a.Is4In6() && p.Contains(a)) {
			return fmt.Errorf("%w: %s is in %s", ErrForbiddenAddress, a, p)
		}
	}
	local := g.LocalAddrs
	if local == nil {
		local = interfaceAddrs
	}
	for _, l := range local() {
		if l.Unmap() == u {
			return fmt.Errorf("%w: %s is this host", ErrForbiddenAddress, a)
		}
	}
	return nil
}

func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

// CheckURL validates a webhook URL: http or https, a host, no user info,
// at most 2048 bytes, and every address the host resolves to allowed.
func (g *Guard) CheckURL(ctx context.Context, raw string) error {
	if len(raw) > 2048 {
		return errors.New("url is longer than 2048 bytes")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return errors.New("url must be an absolute http:// or https:// URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("url must use http or https")
	}
	if u.User != nil {
		return errors.New("url must not contain user info")
	}
	if u.Fragment != "" {
		return errors.New("url must not contain a fragment")
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		return g.CheckAddr(a)
	}
	if g.AllowPrivate {
		return nil
	}
	if h := strings.ToLower(strings.TrimSuffix(host, ".")); h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: %s is this host", ErrForbiddenAddress, host)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("url host %q does not resolve: %w", host, err)
	}
	for _, a := range addrs {
		if err := g.CheckAddr(a); err != nil {
			return err
		}
	}
	return nil
}

// Control is a net.Dialer Control function that refuses forbidden
// addresses at connect time (after DNS resolution).
func (g *Guard) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrForbiddenAddress, address)
	}
	return g.CheckAddr(ap.Addr())
}
