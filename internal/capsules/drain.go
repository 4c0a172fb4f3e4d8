package capsules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/lease"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Host drains (docs/OPERATIONS.md, "Draining a host"). A draining host
// takes no new placements (the store lists only undrained hosts as
// schedulable) and DrainPass — run by one replica at a time — moves its
// capsules off: a running capsule is paused to the shared store and
// resumed on another host (running stays running), a paused or hibernated
// one is re-homed paused to disk. A capsule that cannot move stays, with
// the reason in the host's drain report; once no live capsule is left the
// host is drained. Undrain makes it schedulable again.

// DrainReport is a drain's progress (GET /v1/admin/hosts/{id}).
type DrainReport struct {
	// Left lists the capsules still on the host that are to move.
	Left []DrainCapsule `json:"left"`
	// Moved counts the capsules this drain moved off so far.
	Moved int `json:"moved"`
	// UpdatedAt is the end of the last pass.
	UpdatedAt time.Time `json:"updated_at"`
}

// DrainCapsule is a capsule left on a draining host and why.
type DrainCapsule struct {
	ID     string `json:"capsule_id"`
	Status string `json:"status"`
	// Reason is why it is still there ("" while waiting for its turn).
	Reason string `json:"reason,omitempty"`
	// Permanent: it cannot move at all (local snapshot store, pinned
	// template); the drain does not try it again until undrain.
	Permanent bool `json:"permanent,omitempty"`
	// ResumeAfterMove: it was running when the drain paused it to disk
	// and its move failed; the next pass resumes it where it moves.
	ResumeAfterMove bool `json:"resume_after_move,omitempty"`
}

// ParseDrainReport reads a host's DrainReport (zero when it has none).
func ParseDrainReport(h store.Host) DrainReport {
	var r DrainReport
	if h.DrainReport != "" {
		_ = json.Unmarshal([]byte(h.DrainReport), &r)
	}
	return r
}

// Drain starts draining host id: no new placements; DrainPass moves its
// capsules off. Draining a draining or drained host changes nothing.
func (s *Service) Drain(ctx context.Context, sc Scope, id string) (store.Host, error) {
	h, err := s.adminHost(ctx, sc, id)
	if err != nil || h.Drain != store.HostDrainNone {
		return h, err
	}
	rep, _ := json.Marshal(DrainReport{UpdatedAt: store.Now()})
	if err := s.cfg.Store.SetHostDrain(ctx, id, store.HostDrainDraining, string(rep)); err != nil {
		return h, err
	}
	s.hostAudit(ctx, sc, h, "drain")
	s.cfg.Events.Emit(ctx, events.HostTeam(h), events.HostDraining, h.ID, nil)
	s.log.Info("host draining", "host_id", id)
	return s.cfg.Store.GetHost(ctx, id)
}

// Undrain makes host id schedulable again (a drain in progress stops at
// its next capsule; capsules already moved stay where they are).
func (s *Service) Undrain(ctx context.Context, sc Scope, id string) (store.Host, error) {
	h, err := s.adminHost(ctx, sc, id)
	if err != nil || h.Drain == store.HostDrainNone {
		return h, err
	}
	if err := s.cfg.Store.SetHostDrain(ctx, id, store.HostDrainNone, ""); err != nil {
		return h, err
	}
	// Capsules the drain paused to disk and could not move yet were
	// running: they run again here.
	for _, l := range ParseDrainReport(h).Left {
		if l.ResumeAfterMove {
			s.resumeDrained(ctx, l.ID)
		}
	}
	s.hostAudit(ctx, sc, h, "undrain")
	s.log.Info("host undrained", "host_id", id)
	return s.cfg.Store.GetHost(ctx, id)
}

// resumeDrained runs again, on its own host, a capsule a drain paused to
// disk and did not move — unless a move of it is under way (its lease is
// taken: that move resumes it where it goes) or it is no longer
// hibernated on an available host.
func (s *Service) resumeDrained(ctx context.Context, id string) {
	c, err := s.cfg.Store.GetCapsuleUnscoped(ctx, id)
	if err != nil || c.Status != store.CapsuleHibernated {
		return
	}
	if away, err := s.hostAway(ctx, c); err != nil || away {
		return
	}
	holder, name := lease.NewHolder(), "capsule-move:"+c.ID
	now := time.Now()
	if ok, err := s.cfg.Store.TryLease(ctx, name, holder, now, now.Add(moveLeaseTTL)); err != nil || !ok {
		return
	}
	defer func() { _ = s.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), name, holder) }()
	if c, err = s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID); err != nil || c.Status != store.CapsuleHibernated {
		return
	}
	if _, err := s.resumeHere(ctx, SystemScope(), c, c.TimeoutSec); err != nil {
		s.log.Warn("undrain: could not resume a capsule the drain had paused", "capsule_id", id, "err", err)
	}
}

func (s *Service) adminHost(ctx context.Context, sc Scope, id string) (store.Host, error) {
	if !sc.anyTeam() {
		return store.Host{}, errorf(KindPermissionDenied, "only a platform admin can drain a host")
	}
	h, err := s.cfg.Store.GetHost(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return h, errorf(KindNotFound, "host %s not found", id)
	}
	return h, err
}

func (s *Service) hostAudit(ctx context.Context, sc Scope, h store.Host, action string) {
	if s.cfg.Audit == nil {
		return
	}
	s.cfg.Audit.Admin(ctx, audit.Entry{Actor: sc.Actor, ResourceType: "host", ResourceID: h.ID, Action: action})
}

// DrainPass runs one pass of every draining host's drain (a background
// job one replica runs at a time: internal/lease).
func (s *Service) DrainPass(ctx context.Context) error {
	hosts, err := s.cfg.Store.ListHosts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts {
		if h.Drain != store.HostDrainDraining {
			continue
		}
		if err := s.drainHost(ctx, h); err != nil {
			errs = append(errs, fmt.Errorf("drain host %s: %w", h.ID, err))
		}
	}
	return errors.Join(errs...)
}

// toMove reports whether a capsule in status st is one a drain moves (or
// waits for: a create in flight).
func toMove(st store.CapsuleStatus) bool {
	switch st {
	case store.CapsulePending, store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused, store.CapsuleHibernated:
		return true
	}
	return false
}

// drainLeaseTTL bounds a host's drain pass lease, renewed before each
// capsule: a pass longer than the job lease's TTL (moves take seconds
// each) is never joined by a second replica's pass over the same host,
// and a replica that dies mid-pass hands the host over within it.
const drainLeaseTTL = 3 * time.Minute

func (s *Service) drainHost(ctx context.Context, h store.Host) error {
	holder, name := lease.NewHolder(), "host-drain:"+h.ID
	hold := func() bool {
		now := time.Now()
		ok, err := s.cfg.Store.TryLease(ctx, name, holder, now, now.Add(drainLeaseTTL))
		return err == nil && ok
	}
	if !hold() {
		return nil // another replica's pass is at it
	}
	defer func() { _ = s.cfg.Store.ReleaseLease(context.WithoutCancel(ctx), name, holder) }()
	// Re-read under the lease: the previous pass's report is the base.
	h, err := s.cfg.Store.GetHost(ctx, h.ID)
	if err != nil || h.Drain != store.HostDrainDraining {
		return err
	}
	prev := ParseDrainReport(h)
	permanent := map[string]DrainCapsule{}
	resumeAfter := map[string]bool{}
	for _, l := range prev.Left {
		if l.Permanent {
			permanent[l.ID] = l
		}
		resumeAfter[l.ID] = l.ResumeAfterMove
	}
	caps, err := s.cfg.Store.ListCapsulesByHost(ctx, h.ID)
	if err != nil {
		return err
	}
	rep := DrainReport{Moved: prev.Moved}
	var todo []store.Capsule
	for _, c := range caps {
		if toMove(c.Status) {
			todo = append(todo, c)
		}
	}
	// progress records the report mid-pass: what is done, and the rest
	// still waiting its turn (best effort; the pass's end writes it all).
	progress := func(next int) {
		p := rep
		p.Left = slices.Clone(rep.Left)
		for _, c := range todo[next:] {
			p.Left = append(p.Left, DrainCapsule{ID: c.ID, Status: string(c.Status), ResumeAfterMove: resumeAfter[c.ID]})
		}
		p.UpdatedAt = store.Now()
		b, _ := json.Marshal(p)
		if cur, err := s.cfg.Store.GetHost(ctx, h.ID); err == nil && cur.Drain == store.HostDrainDraining {
			_ = s.cfg.Store.SetHostDrain(ctx, h.ID, store.HostDrainDraining, string(b))
		}
	}
	stopped := false
	for i, c := range todo {
		if i > 0 {
			progress(i)
			if !hold() {
				return nil
			}
		}
		if p, ok := permanent[c.ID]; ok && p.Status == string(c.Status) {
			rep.Left = append(rep.Left, p)
			continue
		}
		if stopped || ctx.Err() != nil {
			rep.Left = append(rep.Left, DrainCapsule{ID: c.ID, Status: string(c.Status), ResumeAfterMove: resumeAfter[c.ID]})
			continue
		}
		// Undrained meanwhile: stop moving.
		if cur, err := s.cfg.Store.GetHost(ctx, h.ID); err != nil || cur.Drain != store.HostDrainDraining {
			return err
		}
		if c.Status == store.CapsuleRunning {
			// Recorded before the pause: a pass cut short (a replica or
			// the database killed) leaves the intent behind, and the next
			// pass — or an undrain — runs the capsule again.
			intent := resumeAfter[c.ID]
			resumeAfter[c.ID] = true
			progress(i)
			resumeAfter[c.ID] = intent
		}
		left, err := s.drainCapsule(ctx, c, resumeAfter[c.ID])
		if left == nil {
			rep.Moved++
			continue
		}
		if err != nil && errors.Is(err, errNoCapacity) {
			stopped = true // nothing else fits either this pass
		}
		rep.Left = append(rep.Left, *left)
	}
	rep.UpdatedAt = store.Now()
	state := store.HostDrainDraining
	if len(rep.Left) == 0 {
		state = store.HostDrainDrained
	}
	b, _ := json.Marshal(rep)
	// Undrained during the pass: leave it undrained.
	if cur, err := s.cfg.Store.GetHost(ctx, h.ID); err != nil || cur.Drain != store.HostDrainDraining {
		return err
	}
	if err := s.cfg.Store.SetHostDrain(context.WithoutCancel(ctx), h.ID, state, string(b)); err != nil {
		return err
	}
	if state == store.HostDrainDrained {
		s.cfg.Events.Emit(ctx, events.HostTeam(h), events.HostDrained, h.ID, map[string]any{"moved": rep.Moved})
		s.log.Info("host drained", "host_id", h.ID, "moved", rep.Moved)
	}
	return nil
}

var errNoCapacity = errors.New("no capacity")

// drainCapsule moves c off its draining host. It returns nil when c moved,
// else what to report (err says why, errNoCapacity when no host has room).
func (s *Service) drainCapsule(ctx context.Context, c store.Capsule, resume bool) (*DrainCapsule, error) {
	left := func(reason string, permanent bool, err error) (*DrainCapsule, error) {
		return &DrainCapsule{ID: c.ID, Status: string(c.Status), Reason: reason, Permanent: permanent, ResumeAfterMove: resume}, err
	}
	switch c.Status {
	case store.CapsulePending, store.CapsuleStarting:
		return left("being created; moved once it runs", false, nil)
	}
	sc := SystemScope()
	// Where it goes first: a running capsule is not paused for nothing.
	if why, _, err := s.cannotMove(ctx, c); err != nil {
		return left(err.Error(), false, err)
	} else if why != "" && c.Status == store.CapsuleHibernated {
		return left("cannot move: "+why, true, nil)
	}
	if c.Status != store.CapsuleHibernated {
		probe, err := s.moveTarget(ctx, c)
		if err != nil {
			return left("no other host has capacity for it", false, errNoCapacity)
		}
		s.cfg.Scheduler.Release(probe.ID, c.ID)
		cl, _, err := s.agentFor(ctx, c)
		if err != nil {
			return left("its host is not reachable", false, err)
		}
		pctx, cancel := context.WithTimeout(ctx, moveLeaseTTL)
		resp, err := cl.PauseCapsule(pctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: c.ID, ToDisk: true}))
		cancel()
		if err != nil {
			s.markGoneIfMissing(ctx, cl, c, "the capsule vanished from its host during a drain")
			return left("pause to disk failed: "+clip(err.Error()), false, err)
		}
		s.recordExport(ctx, c, resp.Msg)
		wasRunning := c.Status == store.CapsuleRunning
		resume = resume || wasRunning
		if c, err = s.settle(ctx, c, store.CapsuleHibernated); err != nil {
			return left(err.Error(), false, err)
		}
		if len(resp.Msg.GetExport()) == 0 {
			// It cannot move after all: put it back as it was.
			if wasRunning {
				if _, rerr := s.resumeHere(ctx, sc, c, c.TimeoutSec); rerr != nil {
					s.log.Warn("drain: could not resume a capsule that cannot move", "capsule_id", c.ID, "err", rerr)
				}
				c.Status = store.CapsuleRunning
			}
			return left("cannot move: "+resp.Msg.GetExportUnavailable(), true, nil)
		}
		resume = wasRunning
		if _, err := s.move(ctx, sc, c, resume, c.TimeoutSec); err != nil {
			// Put it back as it was here; the next pass tries again.
			if wasRunning && !errors.Is(err, errRehome) {
				if _, rerr := s.resumeHere(context.WithoutCancel(ctx), sc, c, c.TimeoutSec); rerr == nil {
					c.Status, resume = store.CapsuleRunning, false
				} else {
					s.log.Warn("drain: could not resume a capsule whose move failed; the next pass moves it running", "capsule_id", c.ID, "err", rerr)
				}
			}
			if kindOf(err) == KindUnavailable {
				return left("move failed: "+errMessage(err), false, errNoCapacity)
			}
			return left("move failed: "+errMessage(err), false, err)
		}
		return nil, nil
	}
	if _, err := s.move(ctx, sc, c, resume, c.TimeoutSec); err != nil {
		if kindOf(err) == KindUnavailable {
			return left("move failed: "+errMessage(err), false, errNoCapacity)
		}
		return left("move failed: "+errMessage(err), false, err)
	}
	return nil, nil
}

func kindOf(err error) Kind {
	var se *Error
	if errors.As(err, &se) {
		return se.Kind
	}
	return ""
}

func errMessage(err error) string {
	var se *Error
	if errors.As(err, &se) && se.Message != "" {
		return se.Message
	}
	return clip(err.Error())
}
