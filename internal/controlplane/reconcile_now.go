package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// maxCreateGrace bounds Server.createGrace.
const maxCreateGrace = 30 * time.Second

// ReconcileHost reconciles one host now (a host that registered, answered
// again after silence, or whose agent restarted): the store is aligned
// with what its agent reports, and capsules the store still has as
// pending or starting from before the agent's start (creates the agent
// lost) are resolved at once.
func (s *Server) ReconcileHost(ctx context.Context, hostID string) error {
	h, err := s.store.GetHost(ctx, hostID)
	if err != nil {
		return err
	}
	if h.Status == store.HostUnavailable {
		return nil
	}
	return s.reconcileHost(ctx, s.refreshHostInfo(ctx, h))
}

// refreshHostInfo asks h's agent for its overcommit ratios and
// capabilities (GetHostInfo) and records them when the agent reports
// ratios (`wrenn agent --cpu-overcommit …`, which has no heartbeat of its
// own to carry them) and they differ from the stored ones. An agent
// reporting none (the one `wrenn up` runs in process, whose heartbeat
// carries them) is left alone. It returns h as updated; failures only log.
func (s *Server) refreshHostInfo(ctx context.Context, h store.Host) store.Host {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := s.agents.Client(h).GetHostInfo(cctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	cancel()
	if err != nil {
		return h
	}
	in := resp.Msg
	if in.GetCpuOvercommit() == 0 && in.GetMemoryOvercommit() == 0 && in.GetDiskOvercommit() == 0 && len(in.GetWarmPools()) == 0 {
		return h
	}
	caps := hostlink.Capabilities{
		Runtimes: []string{in.GetDriver()}, MemorySnapshots: in.GetMemorySnapshots(), MemorySnapshotsReason: in.GetMemorySnapshotsReason(),
	}
	caps.IsolationSupport, caps.DefaultIsolation = isolationCaps(in)
	caps.Isolations = caps.Available()
	if len(caps.IsolationSupport) == 0 && in.GetDriver() == "container" {
		caps.Isolations = []string{"container"} // an agent from before isolation selection
	}
	if in.GetStartedAt() > 0 {
		caps.StartedAt = time.Unix(in.GetStartedAt(), 0).UTC()
	}
	for _, p := range in.GetWarmPools() {
		caps.WarmPools = append(caps.WarmPools, hostlink.WarmPool{
			Template: p.GetTemplate(), Ready: int(p.GetReady()), Target: int(p.GetTarget()), Auto: p.GetAuto(), Max: int(p.GetMax()),
			Hits: p.GetHits(), Misses: p.GetMisses(), Limit: p.GetLimit(),
		})
	}
	b, _ := json.Marshal(caps)
	u := store.HostUsage{
		CPUOvercommit: in.GetCpuOvercommit(), MemoryOvercommit: in.GetMemoryOvercommit(), DiskOvercommit: in.GetDiskOvercommit(),
		Capabilities: string(b),
	}
	if u.CPUOvercommit == h.CPUOvercommit && u.MemoryOvercommit == h.MemoryOvercommit && u.DiskOvercommit == h.DiskOvercommit && u.Capabilities == h.Capabilities {
		return h
	}
	if err := s.store.SetHostCapabilities(ctx, h.ID, u); err != nil {
		s.log.Warn("record host capabilities", "host_id", h.ID, "err", err)
		return h
	}
	h.CPUOvercommit, h.MemoryOvercommit, h.DiskOvercommit, h.Capabilities = u.CPUOvercommit, u.MemoryOvercommit, u.DiskOvercommit, u.Capabilities
	return h
}

// isolationCaps converts what an agent reports of its isolations.
func isolationCaps(in *pb.GetHostInfoResponse) ([]hostlink.IsolationSupport, string) {
	var out []hostlink.IsolationSupport
	for _, is := range in.GetIsolations() {
		out = append(out, hostlink.IsolationSupport{
			Name: is.GetName(), Available: is.GetAvailable(), Reason: is.GetReason(), KVM: is.GetKvm(), Backend: is.GetBackend(),
		})
	}
	return out, in.GetDefaultIsolation()
}

// hostReturned reconciles hostID in the background, once at a time per
// host (a second call while one runs is folded into a rerun).
func (s *Server) hostReturned(hostID string) {
	s.returnMu.Lock()
	if s.returning == nil {
		s.returning = map[string]bool{}
	}
	if running, ok := s.returning[hostID]; ok {
		if !running {
			s.returning[hostID] = true // run again when the current pass ends
		}
		s.returnMu.Unlock()
		return
	}
	s.returning[hostID] = false
	s.returnMu.Unlock()
	base := s.baseCtx()
	s.returnWG.Go(func() {
		for {
			ctx, cancel := context.WithTimeout(base, 2*time.Minute)
			if err := s.ReconcileHost(ctx, hostID); err != nil && base.Err() == nil {
				s.log.Warn("reconcile of a returning host failed", "host_id", hostID, "err", err)
			}
			cancel()
			s.returnMu.Lock()
			again := s.returning[hostID]
			if !again || base.Err() != nil {
				delete(s.returning, hostID)
				s.returnMu.Unlock()
				return
			}
			s.returning[hostID] = false
			s.returnMu.Unlock()
		}
	})
}

func (s *Server) baseCtx() context.Context {
	s.returnMu.Lock()
	defer s.returnMu.Unlock()
	if s.bg != nil {
		return s.bg
	}
	return context.Background()
}

// agentStartedAt is when h's agent last started, as it reported (zero if
// it did not).
func agentStartedAt(h store.Host) time.Time {
	var c hostlink.Capabilities
	_ = json.Unmarshal([]byte(h.Capabilities), &c)
	return c.StartedAt
}

// createLost reports whether capsule c, pending or starting and absent
// from the list its agent gave, will never be created: it was last updated
// before the agent started (the agent lost the create when it stopped), or
// longer than createGrace() ago and the agent, asked once more, does not
// know it.
func (s *Server) createLost(ctx context.Context, h store.Host, c store.Capsule, now time.Time) (bool, error) {
	started := agentStartedAt(h)
	if started.IsZero() || !c.UpdatedAt.Before(started) {
		if now.Sub(c.UpdatedAt) < s.createGrace() {
			return false, nil
		}
	}
	// Ask again: the create may have reached the agent after its list.
	there, err := s.capsules.OnHost(ctx, h, c.ID)
	if err != nil {
		return false, errors.Join(errors.New("ping capsule "+c.ID), err)
	}
	return !there, nil
}
