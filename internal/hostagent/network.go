package hostagent

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// policyFromProto converts a request's network fields. allow_internet
// false with allow/deny rules is a client error (there is no egress to
// shape); rate limits alone are fine. The policy itself is validated by
// runtime.NetworkPolicy.Compile (an ErrInvalidSpec error, INVALID_ARGUMENT).
func policyFromProto(allowInternet bool, p *pb.NetworkPolicy) (*runtime.NetworkPolicy, error) {
	if p == nil {
		return nil, nil
	}
	if !allowInternet && len(p.GetAllowOut())+len(p.GetDenyOut()) > 0 {
		return nil, fmt.Errorf("%w: network.allow_out/deny_out need allow_internet: with allow_internet false the capsule has no egress at all", runtime.ErrInvalidSpec)
	}
	np := &runtime.NetworkPolicy{
		AllowOut: p.GetAllowOut(), DenyOut: p.GetDenyOut(), AllowPrivate: p.GetAllowPrivate(),
		EgressMBps: int(p.GetEgressMbps()), IngressMBps: int(p.GetIngressMbps()), BurstMB: int(p.GetBurstMb()),
	}
	if err := np.Validate(); err != nil {
		return nil, err
	}
	return np, nil
}

func policyProto(p *runtime.NetworkPolicy) *pb.NetworkPolicy {
	if p == nil {
		return nil
	}
	return &pb.NetworkPolicy{
		AllowOut: p.AllowOut, DenyOut: p.DenyOut, AllowPrivate: p.AllowPrivate,
		EgressMbps: int32(p.EgressMBps), IngressMbps: int32(p.IngressMBps), BurstMb: int32(p.BurstMB), //nolint:gosec // bounded by Compile
	}
}

// updateNetwork applies a new policy through the driver and records it.
func (a *Agent) updateNetwork(ctx context.Context, id string, allowInternet bool, p *runtime.NetworkPolicy) (record, runtime.Info, error) {
	c, err := a.lookup(id)
	if err != nil {
		return record{}, runtime.Info{}, err
	}
	nu, ok := a.driver.(runtime.NetworkUpdater)
	if !ok {
		return record{}, runtime.Info{}, fmt.Errorf("update network: %w", runtime.ErrNotSupported)
	}
	if err := nu.UpdateNetwork(ctx, id, allowInternet, p); err != nil {
		return record{}, runtime.Info{}, err
	}
	if err := a.save(c, func(r *record) {
		r.Spec.AllowInternet = allowInternet
		r.Spec.Network = p
	}); err != nil {
		return record{}, runtime.Info{}, err
	}
	rec, info, _ := c.snapshot()
	info.AllowInternet, info.Network = allowInternet, p
	return rec, info, nil
}

func (s service) UpdateCapsuleNetwork(ctx context.Context, req *connect.Request[pb.UpdateCapsuleNetworkRequest]) (*connect.Response[pb.UpdateCapsuleNetworkResponse], error) {
	m := req.Msg
	if m.GetCapsuleId() == "" {
		return nil, invalid("capsule_id is required")
	}
	p, err := policyFromProto(m.GetAllowInternet(), m.GetNetwork())
	if err != nil {
		return nil, toConnect(err)
	}
	rec, info, err := s.a.updateNetwork(ctx, m.GetCapsuleId(), m.GetAllowInternet(), p)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.UpdateCapsuleNetworkResponse{Capsule: capsuleProto(rec, info)}), nil
}

// networkCounters reads the capsule's counters (nil when it has no
// network now or the driver cannot say).
func (a *Agent) networkCounters(ctx context.Context, id string) *pb.NetworkCounters {
	st, err := a.driver.Stats(ctx, id)
	if err != nil {
		return nil
	}
	return &pb.NetworkCounters{BytesIn: st.NetBytesIn, BytesOut: st.NetBytesOut, DroppedPackets: st.NetDroppedPackets}
}
