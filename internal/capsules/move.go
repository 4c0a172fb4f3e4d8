package capsules

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/lease"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Moves between hosts (docs/FLEET.md, "Moving capsules"). A capsule paused
// to disk on a host whose snapshot store every host shares gets an export
// record from its agent (store.Capsule.MoveRecord). When its host is
// unavailable or draining, the capsule moves: the scheduler picks another
// host, that host's agent adopts it from the record (and resumes it when
// asked), the row is re-homed with one conditional update, and the old
// host — now or when it comes back (the reconciler) — releases its copy
// without deleting the snapshot. The id, files, processes (where memory is
// kept), envd access token and port-proxy URL (by capsule id) survive.

// moveLeaseTTL bounds how long one move may hold its capsule's lease
// (restoring a large memory image takes a while).
const moveLeaseTTL = 10 * time.Minute

// recordExport stores the export record a pause to disk returned ("" when
// the capsule cannot move), replacing the previous one.
func (s *Service) recordExport(ctx context.Context, c store.Capsule, resp *pb.PauseCapsuleResponse) {
	if err := s.cfg.Store.SetCapsuleMoveRecord(context.WithoutCancel(ctx), c.TeamID, c.ID, string(resp.GetExport())); err != nil {
		s.log.Warn("could not record the capsule's export record; it cannot move", "capsule_id", c.ID, "err", err)
	}
	if len(resp.GetExport()) == 0 && resp.GetExportUnavailable() != "" {
		s.log.Debug("capsule paused to disk cannot move", "capsule_id", c.ID, "reason", resp.GetExportUnavailable())
	}
}

// hostAway reports whether c's host cannot take c back: gone, unavailable
// or draining (a move is then the way to resume it).
func (s *Service) hostAway(ctx context.Context, c store.Capsule) (bool, error) {
	away, _, err := s.hostState(ctx, c)
	return away, err
}

// hostState is hostAway, and whether the host still runs capsules (a
// draining host that is online: a resume there is the fallback when a
// move finds no room).
func (s *Service) hostState(ctx context.Context, c store.Capsule) (away, reachable bool, err error) {
	if c.HostID == "" {
		return true, false, nil
	}
	h, err := s.cfg.Store.GetHost(ctx, c.HostID)
	if errors.Is(err, store.ErrNotFound) {
		return true, false, nil
	}
	if err != nil {
		return false, false, err
	}
	online := h.Status != store.HostUnavailable
	return !online || h.Drain != store.HostDrainNone, online, nil
}

// cannotMove says why hibernated capsule c cannot move to another host
// ("" when it can): no export record (its host's snapshot store is its
// own), volumes mounted, or a template that lives only on its host.
func (s *Service) cannotMove(ctx context.Context, c store.Capsule) (string, store.Template, error) {
	if c.MoveRecord == "" {
		return "its snapshot is in its host's own snapshot store (the host has no shared --snapshot-store)", store.Template{}, nil
	}
	// A paused capsule keeps its volumes attached on its host (docs/VOLUMES.md);
	// moving it would need them released and fetched there first: not built.
	if mounts, err := s.cfg.Store.CapsuleVolumeMounts(ctx, c.ID); err != nil {
		return "", store.Template{}, err
	} else if len(mounts) > 0 {
		return "it has volumes mounted (a capsule with volumes cannot move between hosts yet)", store.Template{}, nil
	}
	tmpl, err := s.cfg.Store.GetTemplate(ctx, c.TeamID, c.TemplateID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return "", tmpl, err
	}
	if err == nil {
		if pin := PinnedHost(tmpl); pin != "" {
			return fmt.Sprintf("its template %q exists only on host %s (no shared template store)", tmpl.Name, pin), tmpl, nil
		}
	}
	return "", tmpl, nil
}

// moveTarget picks the host c moves to (never its own), counting it
// against that host. The caller releases the placement.
func (s *Service) moveTarget(ctx context.Context, c store.Capsule) (store.Host, error) {
	h, err := s.pick(ctx, c.TeamID, scheduler.Request{
		CapsuleID: c.ID, VCPUs: c.VCPUs, MemoryMB: c.MemoryMB, DiskMB: c.DiskSizeMB, Isolation: c.Isolation,
	})
	if err != nil {
		return h, err
	}
	if h.ID == c.HostID {
		s.cfg.Scheduler.Release(h.ID, c.ID)
		return store.Host{}, &Error{Kind: KindUnavailable, Message: MsgNoCapacity}
	}
	return h, nil
}

// MoveResult is a capsule after a move.
type MoveResult struct {
	Capsule    store.Capsule
	From, To   string
	MemoryKept bool
}

// move moves hibernated capsule c to another host; with resume it runs
// there afterwards (timeout as in Resume), else it stays hibernated. Only
// one move of a capsule runs at a time across replicas (a store lease).
func (s *Service) move(ctx context.Context, sc Scope, c store.Capsule, resume bool, timeout int64) (MoveResult, error) {
	res := MoveResult{Capsule: c, From: c.HostID}
	if c.Status != store.CapsuleHibernated {
		return res, errorf(KindConflict, "capsule %s is %s; only a capsule paused to disk moves", c.ID, c.Status)
	}
	why, tmpl, err := s.cannotMove(ctx, c)
	if err != nil {
		return res, err
	}
	if why != "" {
		return res, &Error{Kind: KindUnavailable, Message: fmt.Sprintf("capsule %s cannot move to another host: %s; %s", c.ID, why, MsgAgentUnavailable)}
	}
	holder, name := lease.NewHolder(), "capsule-move:"+c.ID
	now := time.Now()
	got, err := s.cfg.Store.TryLease(ctx, name, holder, now, now.Add(moveLeaseTTL))
	if err != nil {
		return res, err
	}
	if !got {
		return res, errorf(KindConflict, "capsule %s is being moved to another host; try again in a moment", c.ID)
	}
	defer func() { _ = s.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), name, holder) }()
	// Re-read under the lease: another replica may have moved it.
	if c, err = s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID); err != nil {
		return res, err
	}
	if c.HostID != res.From || c.Status != store.CapsuleHibernated {
		return MoveResult{Capsule: c, From: res.From, To: c.HostID}, errorf(KindConflict, "capsule %s changed while a move waited", c.ID)
	}
	host, err := s.moveTarget(ctx, c)
	if err != nil {
		return res, err
	}
	defer s.cfg.Scheduler.Release(host.ID, c.ID)
	t0 := time.Now()
	// Detached: an adopt cut short by a caller that gave up would leave
	// the new host holding a capsule the store does not place there.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), moveLeaseTTL)
	defer cancel()
	resp, err := s.cfg.Agents.Client(host).AdoptCapsule(actx, connect.NewRequest(&pb.AdoptCapsuleRequest{
		Export: []byte(c.MoveRecord), Resume: resume, TimeoutSec: agentTimeout(c, timeout), TemplateChecksum: tmpl.Checksum,
	}))
	meta := map[string]any{"from_host": res.From, "to_host": host.ID, "resume": resume}
	if err != nil {
		s.audit(ctx, sc, c, "move", err, meta)
		s.log.Warn("capsule move failed; it stays on its host", "capsule_id", c.ID, "from", res.From, "to", host.ID, "err", err)
		return res, AgentError(err)
	}
	if err := s.rehome(actx, c, host); err != nil {
		return res, err
	}
	res.To = host.ID
	res.MemoryKept = resp.Msg.GetCapsule().GetMemoryKept()
	c.HostID = host.ID
	s.releaseOld(actx, res.From, c.ID)
	if s.cfg.OnGone != nil {
		s.cfg.OnGone(c.ID) // cached port proxies point at the old host
	}
	meta["took_ms"] = time.Since(t0).Milliseconds()
	s.audit(ctx, sc, c, "move", nil, meta)
	s.cfg.Events.Emit(ctx, c.TeamID, events.CapsuleMoved, c.ID, map[string]any{
		"from_host": res.From, "to_host": host.ID, "status": string(c.Status), "resumed": resume,
	})
	s.log.Info("capsule moved", "capsule_id", c.ID, "from", res.From, "to", host.ID, "resumed", resume,
		"memory_kept", res.MemoryKept, "took_ms", time.Since(t0).Milliseconds())
	if resume {
		t := store.Now().Add(time.Duration(timeout) * time.Second)
		if e := resp.Msg.GetCapsule().GetExpiresAt(); e > 0 {
			t = store.Truncate(time.Unix(e, 0))
		}
		_ = s.cfg.Store.SetCapsuleTimeout(actx, c.TeamID, c.ID, timeout, &t)
		_ = s.cfg.Store.SetCapsulePauseReason(actx, c.TeamID, c.ID, "")
		c, err = s.settle(actx, c, store.CapsuleRunning)
		res.Capsule = c
		return res, err
	}
	res.Capsule, err = s.cfg.Store.GetCapsule(actx, c.TeamID, c.ID)
	return res, err
}

// errRehome: the new host adopted the capsule but the store could not
// record it (the old copy must not be started again).
var errRehome = errors.New("the move could not be recorded")

// rehome records that c (hibernated, on c.HostID) now lives on host. A
// store that fails is retried; a capsule deleted meanwhile is dropped from
// host again (its snapshot goes with it, as the delete wanted).
func (s *Service) rehome(ctx context.Context, c store.Capsule, host store.Host) error {
	var (
		ok  bool
		err error
	)
	for i := range 5 {
		if i > 0 {
			time.Sleep(time.Duration(i) * time.Second)
		}
		if ok, err = s.cfg.Store.MoveCapsuleHost(ctx, c.TeamID, c.ID, c.HostID, host.ID, store.CapsuleHibernated); err == nil {
			break
		}
	}
	switch {
	case err != nil:
		s.log.Error("capsule adopted by its new host but the store could not record the move; the reconciler resolves it",
			"capsule_id", c.ID, "from", c.HostID, "to", host.ID, "err", err)
		return fmt.Errorf("%w: %w", errRehome, err)
	case ok:
		return nil
	}
	if _, gerr := s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID); errors.Is(gerr, store.ErrNotFound) {
		s.log.Warn("capsule deleted during its move; dropping the new copy", "capsule_id", c.ID, "to", host.ID)
		_, _ = s.cfg.Agents.Client(host).DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: c.ID}))
	}
	return errorf(KindConflict, "capsule %s changed during its move", c.ID)
}

// releaseOld tells the old host of a moved capsule to forget its copy
// (best effort: a host that is away is told by the reconciler when it is
// back, ReleaseMoved).
func (s *Service) releaseOld(ctx context.Context, hostID, id string) {
	h, err := s.cfg.Store.GetHost(ctx, hostID)
	if err != nil || h.Status == store.HostUnavailable {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = s.cfg.Agents.Client(h).ReleaseCapsule(rctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		s.log.Warn("old host did not release a moved capsule; the reconciler retries", "capsule_id", id, "host_id", hostID, "err", err)
	}
}

// ReleaseMoved tells host h to forget capsule id, which the store places
// on another host now (the reconciler: a host back after a move, or a copy
// a move whose answer was lost left there); its snapshots stay.
func (s *Service) ReleaseMoved(ctx context.Context, h store.Host, id string) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := s.cfg.Agents.Client(h).ReleaseCapsule(rctx, connect.NewRequest(&pb.ReleaseCapsuleRequest{CapsuleId: id, Running: true}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil
	}
	return err
}
