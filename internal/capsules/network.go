package capsules

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// MsgInternetOff is the answer to a request for internet when the
// platform runs with --capsule-internet=off.
const MsgInternetOff = "outbound internet is turned off on this platform (wrenn server --capsule-internet=off)"

// resolveInternet decides a new capsule's allow_internet: the request's,
// else its template's default, else the team's default, else on; the
// platform switch (Config.InternetOff) caps it, and an explicit request
// for internet under it is permission_denied.
func (s *Service) resolveInternet(team store.Team, tmpl store.Template, req *bool) (bool, error) {
	if req != nil {
		if *req && s.cfg.InternetOff {
			return false, errorf(KindPermissionDenied, "%s", MsgInternetOff)
		}
		return *req, nil
	}
	v := true
	switch {
	case tmpl.CapsuleInternet != nil:
		v = *tmpl.CapsuleInternet
	case team.CapsuleInternet != nil:
		v = *team.CapsuleInternet
	}
	return v && !s.cfg.InternetOff, nil
}

// MaxPrivateRanges bounds a team's allowed private ranges.
const MaxPrivateRanges = 100

// privateRanges mirrors the private ranges the host agent blocks
// (internal/network): an operator may open parts of these, nothing else.
var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("172.16.0.0/12"), netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("198.18.0.0/15"),
}

// CheckPrivateRanges validates the private ranges a platform admin allows
// a team (BYOC teams reaching their own networks) and returns them in
// canonical form: IPv4 CIDRs or addresses, each inside a private range
// (RFC 1918, CGNAT, 192.0.0.0/24, 198.18.0.0/15). Anything else (public,
// loopback, link-local with the metadata address, multicast, IPv6) is
// invalid_argument: those are never opened. The host, its other capsules
// and the agent's capsule subnet stay blocked on the host whatever is
// allowed here.
func CheckPrivateRanges(ranges []string) ([]string, error) {
	if len(ranges) > MaxPrivateRanges {
		return nil, errorf(KindInvalid, "allowed_private_ranges: at most %d ranges", MaxPrivateRanges)
	}
	c, err := (&runtime.NetworkPolicy{AllowPrivate: ranges}).Compile()
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), runtime.ErrInvalidSpec.Error()+": ")
		return nil, &Error{Kind: KindInvalid, Message: clip(strings.Replace(msg, "network.allow_private", "allowed_private_ranges", 1)), Err: err}
	}
	out := make([]string, 0, len(c.AllowPrivate))
	for i, pf := range c.AllowPrivate {
		if !slices.ContainsFunc(privateRanges, func(r netip.Prefix) bool { return r.Bits() <= pf.Bits() && r.Contains(pf.Addr()) }) {
			return nil, errorf(KindInvalid, "allowed_private_ranges[%d] %q: not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 192.0.0.0/24, 198.18.0.0/15); public, loopback, link-local and metadata addresses are never allowed this way", i, ranges[i])
		}
		if s := pf.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// checkNetwork validates a capsule's egress policy for allowInternet and
// returns what is stored (nil for the defaults). Rules with internet off
// are invalid (there is no egress to filter); rate limits alone are fine.
// The rules themselves are checked by runtime.NetworkPolicy.Compile, the
// agent's own check, so the API and the host agree.
func checkNetwork(allowInternet bool, n *store.CapsuleNetwork) (*store.CapsuleNetwork, error) {
	if n.IsZero() {
		return nil, nil
	}
	if !allowInternet && len(n.AllowOut)+len(n.DenyOut) > 0 {
		return nil, errorf(KindInvalid, "network.allow_out and network.deny_out need allow_internet: with allow_internet false the capsule has no egress at all")
	}
	if _, err := runtimePolicy(n).Compile(); err != nil {
		msg := strings.TrimPrefix(err.Error(), runtime.ErrInvalidSpec.Error()+": ")
		return nil, &Error{Kind: KindInvalid, Message: clip(msg), Err: err}
	}
	return n, nil
}

func runtimePolicy(n *store.CapsuleNetwork) *runtime.NetworkPolicy {
	return &runtime.NetworkPolicy{
		AllowOut: n.AllowOut, DenyOut: n.DenyOut,
		EgressMBps: n.EgressMBps, IngressMBps: n.IngressMBps, BurstMB: n.BurstMB,
	}
}

// networkProto is the agent's form of a stored policy (nil = defaults)
// with the private ranges its team may reach, sent only with internet on
// (allow_internet false is no egress at all).
func networkProto(n *store.CapsuleNetwork, allowInternet bool, team store.Team) *pb.NetworkPolicy {
	var priv []string
	if allowInternet {
		priv = team.AllowedPrivateRanges
	}
	if n.IsZero() && len(priv) == 0 {
		return nil
	}
	p := &pb.NetworkPolicy{AllowPrivate: priv}
	if n != nil {
		p.AllowOut, p.DenyOut = n.AllowOut, n.DenyOut
		p.EgressMbps, p.IngressMbps, p.BurstMb = int32(n.EgressMBps), int32(n.IngressMBps), int32(n.BurstMB) //nolint:gosec // bounded by Compile
	}
	return p
}

// NetworkUpdate is a new egress policy for a capsule.
type NetworkUpdate struct {
	// AllowInternet, when set, switches egress on or off; nil keeps it.
	AllowInternet *bool
	// Network replaces the policy (nil: the defaults).
	Network *store.CapsuleNetwork
}

// SetNetwork replaces the egress policy of a running or paused capsule,
// live, through its agent (established connections keep flowing), and
// records it. An invalid policy is invalid_argument and changes nothing;
// internet under --capsule-internet=off is permission_denied; a capsule
// in any other state is a conflict.
func (s *Service) SetNetwork(ctx context.Context, sc Scope, id string, u NetworkUpdate) (store.Capsule, error) {
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return c, err
	}
	allow := c.AllowInternet && !s.cfg.InternetOff
	if u.AllowInternet != nil {
		if *u.AllowInternet && s.cfg.InternetOff {
			return c, errorf(KindPermissionDenied, "%s", MsgInternetOff)
		}
		allow = *u.AllowInternet
	}
	nw, err := checkNetwork(allow, u.Network)
	if err != nil {
		return c, err
	}
	if c.Status != store.CapsuleRunning && c.Status != store.CapsulePaused {
		return c, errorf(KindConflict, "capsule %s is %s: the network of a running or paused capsule can be changed", c.ID, c.Status)
	}
	team, err := s.cfg.Store.GetTeam(ctx, c.TeamID)
	if err != nil {
		return c, err
	}
	cl, _, err := s.agentFor(ctx, c)
	if err != nil {
		return c, err
	}
	if _, err := cl.UpdateCapsuleNetwork(ctx, connect.NewRequest(&pb.UpdateCapsuleNetworkRequest{
		CapsuleId: c.ID, AllowInternet: allow, Network: networkProto(nw, allow, team),
	})); err != nil {
		aerr := AgentError(err)
		s.audit(ctx, sc, c, "set_network", aerr, nil)
		return c, aerr
	}
	if err := s.cfg.Store.SetCapsuleNetwork(context.WithoutCancel(ctx), c.TeamID, c.ID, allow, nw); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return c, errorf(KindNotFound, "capsule %s not found", c.ID)
		}
		return c, err
	}
	c.AllowInternet, c.Network = allow, nw
	meta := map[string]any{"allow_internet": allow}
	if nw != nil {
		meta["allow_out"], meta["deny_out"] = len(nw.AllowOut), len(nw.DenyOut)
		meta["egress_mbps"], meta["ingress_mbps"], meta["burst_mb"] = nw.EgressMBps, nw.IngressMBps, nw.BurstMB
	}
	s.audit(ctx, sc, c, "set_network", nil, meta)
	return c, nil
}
