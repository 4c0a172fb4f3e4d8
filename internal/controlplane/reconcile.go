package controlplane

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// defaultSettle is how long a capsule in a transitional state or an
// agent-only capsule is left alone, so the reconciler never races a create.
const defaultSettle = 2 * time.Minute

// settleOverride, when positive, replaces defaultSettle (tests only).
var settleOverride atomic.Int64

func settleTime() time.Duration {
	if d := settleOverride.Load(); d > 0 {
		return time.Duration(d)
	}
	return defaultSettle
}

// orphanSettle is how long a capsule its agent holds but the store does
// not know is left alone: two reconcile intervals (at least 10 s, at most
// settle). Every create writes its row before it calls the agent, and a
// build's capsule is kept while its build runs (by its labels), so such a
// capsule is one deleted while its host was away; the margin covers clock
// skew between the agent and the control plane.
func (s *Server) orphanSettle(settle time.Duration) time.Duration {
	if settleOverride.Load() > 0 {
		return settle
	}
	return min(max(2*s.cfg.ReconcileInterval, 10*time.Second), settle)
}

// createGrace is how long a pending or starting capsule may be absent from
// its host before the reconciler asks the agent once more and, if it still
// does not have it, marks it lost: two reconcile intervals, at least 5 s
// and at most maxCreateGrace. The agent lists a capsule from the moment a
// create reaches it (before its template is fetched), so only the hop from
// the control plane to the agent needs the grace — or a replica that died
// mid-create, whose capsule never reaches the agent.
func (s *Server) createGrace() time.Duration {
	return min(max(2*s.cfg.ReconcileInterval, 5*time.Second), maxCreateGrace)
}

// ReconcileOnce runs one pass: hosts silent for too long become
// unavailable and their live capsules missing; for every online host the
// store is aligned with what its agent reports, and capsules the store no
// longer knows are destroyed on the agent (a template build's capsule only
// once its build is no longer running).
func (s *Server) ReconcileOnce(ctx context.Context) error {
	staleBefore := time.Now().Add(-time.Duration(s.cfg.HeartbeatMisses) * s.cfg.HeartbeatInterval)
	stale, err := s.store.MarkStaleHostsUnavailable(ctx, staleBefore)
	if err != nil {
		return fmt.Errorf("reconcile: mark stale hosts: %w", err)
	}
	for _, id := range stale {
		s.log.Warn("host missed its heartbeats; marked unavailable", "host_id", id)
		if h, err := s.store.GetHost(ctx, id); err == nil {
			s.events.Emit(ctx, events.HostTeam(h), events.HostDown, id, map[string]any{"reason": "missed its heartbeats"})
		}
		if err := s.markHostCapsulesMissing(ctx, id); err != nil {
			s.log.Warn("reconcile: mark capsules missing", "host_id", id, "err", err)
		}
	}
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: list hosts: %w", err)
	}
	var errs []error
	for _, h := range hosts {
		if h.Status == store.HostUnavailable {
			continue
		}
		if err := s.reconcileHost(ctx, s.refreshHostInfo(ctx, h)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Server) markHostCapsulesMissing(ctx context.Context, hostID string) error {
	return s.capsules.MarkHostMissing(ctx, hostID)
}

func fromAgentState(st pb.CapsuleState) (store.CapsuleStatus, bool) {
	switch st {
	case pb.CapsuleState_CAPSULE_STATE_STARTING:
		return store.CapsuleStarting, true
	case pb.CapsuleState_CAPSULE_STATE_RUNNING:
		return store.CapsuleRunning, true
	case pb.CapsuleState_CAPSULE_STATE_PAUSED:
		return store.CapsulePaused, true
	case pb.CapsuleState_CAPSULE_STATE_HIBERNATED:
		return store.CapsuleHibernated, true
	case pb.CapsuleState_CAPSULE_STATE_STOPPED:
		return store.CapsuleStopped, true
	case pb.CapsuleState_CAPSULE_STATE_ERROR:
		return store.CapsuleError, true
	}
	return "", false
}

func (s *Server) reconcileHost(ctx context.Context, h store.Host) error {
	// Rows changed after this moment may reflect operations the agent's
	// list below does not show yet (a pause or create finishing while the
	// list travels): the agent is asked about them once more.
	listedAt := time.Now().Add(-time.Second)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	resp, err := s.agents.Client(h).ListCapsules(cctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	cancel()
	if err != nil {
		// Liveness is the heartbeat's business; just report.
		return fmt.Errorf("reconcile: host %s: list capsules: %w", h.ID, err)
	}
	onAgent := map[string]*pb.Capsule{}
	for _, c := range resp.Msg.GetCapsules() {
		onAgent[c.GetCapsuleId()] = c
	}
	caps, err := s.store.ListCapsulesByHost(ctx, h.ID)
	if err != nil {
		return fmt.Errorf("reconcile: host %s: %w", h.ID, err)
	}
	now := time.Now()
	settle := settleTime()
	orphanSettle := s.orphanSettle(settle)
	known := map[string]bool{}
	for _, c := range caps {
		known[c.ID] = true
		ac, present := onAgent[c.ID]
		if c.UpdatedAt.After(listedAt) {
			fac, fpresent, ok, unimplemented := s.freshOnAgent(ctx, h, c.ID)
			switch {
			case unimplemented: // an agent without GetCapsule: the list stands
			case !ok:
				continue // the next pass decides
			default:
				ac, present = fac, fpresent
			}
		}
		if !present && (c.Status == store.CapsulePending || c.Status == store.CapsuleStarting) {
			lost, err := s.createLost(ctx, h, c, now)
			if err != nil {
				return fmt.Errorf("reconcile: host %s: %w", h.ID, err)
			}
			if !lost {
				continue
			}
		}
		var (
			want store.CapsuleStatus
			ok   bool
			err  error
		)
		switch {
		case !present:
			switch c.Status {
			case store.CapsuleStopped, store.CapsuleError:
				continue
			}
			if c.ExpiresAt != nil && !c.ExpiresAt.After(now) {
				want = store.CapsuleStopped // reaped by its TTL
				ok, err = s.capsules.Expire(ctx, c)
			} else {
				want = store.CapsuleError
				ok, err = s.capsules.MarkGone(ctx, c, "the capsule is no longer on its host")
			}
		default:
			st, known := fromAgentState(ac.GetState())
			if !known || st == store.CapsuleStarting || st == c.Status {
				continue
			}
			want = st
			ok, err = s.capsules.Align(ctx, c, want, ac.GetErrorReason())
		}
		if err != nil {
			return fmt.Errorf("reconcile: capsule %s: %w", c.ID, err)
		}
		if ok {
			s.log.Info("reconciled capsule state", "capsule_id", c.ID, "host_id", h.ID, "from", c.Status, "to", want)
			if want == store.CapsuleError || want == store.CapsuleStopped {
				s.scheduler.Release(h.ID, c.ID)
			}
		}
	}
	for id, ac := range onAgent {
		if known[id] || now.Sub(time.Unix(ac.GetCreatedAt(), 0)) < orphanSettle {
			continue
		}
		// A template build's capsule has no capsule row: keep it while its
		// build runs; once the build has ended it is an orphan.
		if bid, team, ok := builds.BuildOfCapsule(ac.GetLabels()); ok {
			b, err := s.store.GetBuild(ctx, team, bid)
			if err == nil && b.Status == store.BuildRunning {
				continue
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		// Not in the store on this host: deleted while the host was away,
		// or placed elsewhere. Make sure the store really does not know it.
		if c, err := s.store.GetCapsuleUnscoped(ctx, id); err == nil && c.HostID == h.ID {
			continue
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		} else if err == nil {
			// Placed on another host: moved while this one was away (or
			// before it could be told), or a copy a move left here (the
			// adopt's answer was lost: running here, hibernated in the
			// store on its old host). Forget the copy, keep the snapshots
			// the store's copy restores from.
			if err := s.capsules.ReleaseMoved(ctx, h, id); err != nil {
				s.log.Warn("reconcile: release moved capsule", "capsule_id", id, "host_id", h.ID, "now_on", c.HostID, "err", err)
				continue
			}
			s.log.Info("released a capsule that moved to another host", "capsule_id", id, "host_id", h.ID, "now_on", c.HostID)
			continue
		}
		if err := s.capsules.DestroyOrphan(ctx, h, id); err != nil {
			s.log.Warn("reconcile: destroy orphan capsule", "capsule_id", id, "host_id", h.ID, "err", err)
			continue
		}
		s.log.Info("destroyed orphan capsule", "capsule_id", id, "host_id", h.ID)
	}
	return s.reconcileTemplates(ctx, h, now, settle)
}

// reconcileTemplates deletes from host h the files of team templates the
// store no longer knows: deleted while the host was away, or snapshotted
// by a build that could not record them. Only names shaped like a
// template ID qualify (teams' templates live on hosts under their ID), so
// templates built on the host by hand are never touched; a fresh one is
// left alone for the settle time, so an in-flight build can record it.
func (s *Server) reconcileTemplates(ctx context.Context, h store.Host, now time.Time, settle time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	resp, err := s.agents.Client(h).ListTemplates(cctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
	cancel()
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		return nil // an agent from before template deletes
	}
	if err != nil {
		return fmt.Errorf("reconcile: host %s: list templates: %w", h.ID, err)
	}
	var orphans []string
	for _, t := range resp.Msg.GetTemplates() {
		if store.IsID(store.PrefixTemplate, t.GetName()) && now.Sub(time.Unix(t.GetCreatedAt(), 0)) >= settle {
			orphans = append(orphans, t.GetName())
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	known, err := s.store.AdminListTemplates(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: templates: %w", err)
	}
	inStore := map[string]bool{}
	for _, t := range known {
		inStore[capsules.HostTemplateName(t)] = true
	}
	for _, name := range orphans {
		if inStore[name] {
			continue
		}
		dctx, dcancel := context.WithTimeout(ctx, time.Minute)
		_, err := s.agents.Client(h).DeleteTemplate(dctx, connect.NewRequest(&pb.DeleteTemplateRequest{Template: name}))
		dcancel()
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			s.log.Warn("reconcile: delete orphan template", "template", name, "host_id", h.ID, "err", err)
			continue
		}
		s.log.Info("deleted orphan template files", "template", name, "host_id", h.ID)
	}
	return nil
}

// freshOnAgent asks h's agent about one capsule now (a row changed while
// the host's list was on its way). ok is false when the agent could not
// answer; unimplemented when it has no GetCapsule.
func (s *Server) freshOnAgent(ctx context.Context, h store.Host, id string) (c *pb.Capsule, present, ok, unimplemented bool) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := s.agents.Client(h).GetCapsule(cctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return nil, false, true, false
	case connect.CodeUnimplemented:
		return nil, false, false, true
	}
	if err != nil {
		return nil, false, false, false
	}
	return resp.Msg.GetCapsule(), true, true, false
}
