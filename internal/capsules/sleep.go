package capsules

// Sleeping capsules (docs/LIFECYCLE.md): on_timeout pause, auto-resume on
// use (one resume per capsule however many requests wait), and retention
// of capsules paused by their timeout.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Life-cycle defaults.
const (
	// DefaultPausedRetention is how long a capsule paused by its timeout is
	// kept before retention deletes it (wrenn server --paused-retention).
	DefaultPausedRetention = 720 * time.Hour
	// DefaultResumeWait bounds how long a request waits for an automatic
	// resume.
	DefaultResumeWait = 2 * time.Minute
)

// resolveLifecycle applies the precedence capsule → template → team →
// kill/false to a create's on_timeout and auto_resume.
func resolveLifecycle(req CreateRequest, tmpl store.Template, team store.Team) (string, bool, error) {
	onTimeout, autoResume := store.OnTimeoutKill, false
	for _, d := range []store.LifecycleDefaults{team.Lifecycle, tmpl.Lifecycle, {OnTimeout: req.OnTimeout, AutoResume: req.AutoResume}} {
		if d.OnTimeout != nil {
			onTimeout = *d.OnTimeout
		}
		if d.AutoResume != nil {
			autoResume = *d.AutoResume
		}
	}
	if err := ValidOnTimeout(onTimeout); err != nil {
		return "", false, err
	}
	return onTimeout, autoResume, nil
}

// ValidOnTimeout checks an on_timeout value.
func ValidOnTimeout(v string) error {
	if v != store.OnTimeoutKill && v != store.OnTimeoutPause {
		return errorf(KindInvalid, "on_timeout must be %q or %q", store.OnTimeoutKill, store.OnTimeoutPause)
	}
	return nil
}

// agentTimeout is the TTL a capsule's agent enforces: a capsule that
// pauses at its timeout is never reaped by its host (the service pauses it
// when its expiry passes, TimeoutSweep), others end there.
func agentTimeout(c store.Capsule, timeoutSec int64) int32 {
	if c.OnTimeout == store.OnTimeoutPause {
		return -1
	}
	return int32(timeoutSec) //nolint:gosec // bounded by limits
}

// hostKeepsMemory reports whether pause to disk on host h keeps process
// memory: what its agent says now, else what it last reported
// (capabilities' memory_snapshots).
func (s *Service) hostKeepsMemory(ctx context.Context, h store.Host) bool {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if info, err := s.cfg.Agents.Client(h).GetHostInfo(ictx, connect.NewRequest(&pb.GetHostInfoRequest{})); err == nil {
		return info.Msg.GetMemorySnapshots()
	}
	var caps struct {
		MemorySnapshots bool `json:"memory_snapshots"`
	}
	_ = json.Unmarshal([]byte(h.Capabilities), &caps)
	return caps.MemorySnapshots
}

// wake resumes paused capsule c for a request that uses it (auto_resume).
// Concurrent callers for one capsule share one resume; each waits at most
// ResumeWait. A failed resume is KindResumeFailed.
func (s *Service) wake(ctx context.Context, sc Scope, c store.Capsule) (store.Capsule, error) {
	ch := s.waking.DoChan(c.ID, func() (any, error) {
		// Detached: a caller that gives up must not cut the resume short
		// for the others (the agent's resume is itself detached).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ResumeWait)
		defer cancel()
		res, err := s.Resume(rctx, SystemScope(), c.ID, nil)
		s.systemAudit(rctx, c, "auto_resume", err, map[string]any{"memory_kept": res.MemoryKept, "by": sc.Actor.Type})
		if err != nil {
			// Another replica (or an explicit resume) may have won.
			if cur, gerr := s.cfg.Store.GetCapsuleUnscoped(rctx, c.ID); gerr == nil && cur.Status == store.CapsuleRunning {
				return cur, nil
			}
			s.log.Warn("automatic resume failed", "capsule_id", c.ID, "err", err)
			return nil, err
		}
		s.log.Info("capsule resumed on use", "capsule_id", c.ID, "memory_kept", res.MemoryKept)
		return res.Capsule, nil
	})
	t := time.NewTimer(s.cfg.ResumeWait)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.Err != nil {
			msg := fmt.Sprintf("capsule %s could not be resumed", c.ID)
			var se *Error
			if errors.As(r.Err, &se) && se.Message != "" {
				msg += ": " + se.Message
			}
			return c, &Error{Kind: KindResumeFailed, Message: msg, Err: r.Err}
		}
		return r.Val.(store.Capsule), nil
	case <-t.C:
		return c, errorf(KindResumeFailed, "capsule %s could not be resumed within %s", c.ID, s.cfg.ResumeWait)
	case <-ctx.Done():
		return c, ctx.Err()
	}
}

// systemAudit records an action the platform took on c in c's team's log
// (actor system): timeout pauses, automatic resumes, retention deletes.
func (s *Service) systemAudit(ctx context.Context, c store.Capsule, action string, err error, meta map[string]any) {
	if s.cfg.Audit == nil || c.TeamID == "" {
		return
	}
	s.cfg.Audit.Log(context.WithoutCancel(ctx), audit.Entry{
		TeamID: c.TeamID, Actor: audit.Actor{Type: store.ActorSystem}, ResourceType: "capsule", ResourceID: c.ID,
		Action: action, Failed: err != nil, Metadata: meta,
	})
}

// TimeoutSweep pauses, to disk, every running capsule with on_timeout
// pause whose expiry has passed (with memory where its host keeps it).
// wrenn server runs it every few seconds.
func (s *Service) TimeoutSweep(ctx context.Context) error {
	caps, err := s.cfg.Store.ListTimedOutPausable(ctx, time.Now(), 100)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range caps {
		if err := s.pauseOnTimeout(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("capsule %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) pauseOnTimeout(ctx context.Context, c store.Capsule) error {
	cl, _, err := s.agentFor(ctx, c)
	if err != nil {
		return err
	}
	// The timeout may have been extended since the list was read.
	if cur, err := s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID); err != nil || cur.Status != store.CapsuleRunning ||
		cur.ExpiresAt == nil || cur.ExpiresAt.After(time.Now()) {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	resp, err := cl.PauseCapsule(pctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: c.ID, ToDisk: true}))
	if err != nil {
		s.systemAudit(ctx, c, "timeout_pause", err, nil)
		s.markGoneIfMissing(ctx, cl, c, "the capsule vanished from its host during its timeout pause")
		return AgentError(err)
	}
	s.recordExport(ctx, c, resp.Msg) // move.go
	if _, err := s.settle(ctx, c, store.CapsuleHibernated); err != nil {
		return err
	}
	if err := s.cfg.Store.SetCapsulePauseReason(context.WithoutCancel(ctx), c.TeamID, c.ID, store.PauseReasonTimeout); err != nil {
		return err
	}
	kept := resp.Msg.GetMemoryKept()
	s.systemAudit(ctx, c, "timeout_pause", nil, map[string]any{"memory_kept": kept})
	s.log.Info("capsule paused at its timeout", "capsule_id", c.ID, "memory_kept", kept)
	return nil
}

// RetentionSweep deletes capsules paused by their timeout longer than
// PausedRetention ago, with their snapshots, and records a
// retention_delete audit entry for each. Capsules paused explicitly or by
// a shutdown are never deleted here.
func (s *Service) RetentionSweep(ctx context.Context) error {
	caps, err := s.cfg.Store.ListRetentionExpired(ctx, time.Now().Add(-s.cfg.PausedRetention), 100)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range caps {
		if _, err := s.destroyOnAgent(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("capsule %s: %w", c.ID, err))
			continue
		}
		if err := s.cfg.Store.DeleteCapsule(context.WithoutCancel(ctx), c.TeamID, c.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		s.gone(c.HostID, c.ID)
		meta := map[string]any{"paused_retention": s.cfg.PausedRetention.String()}
		if c.PausedAt != nil {
			meta["paused_at"] = c.PausedAt.UTC().Format(time.RFC3339)
		}
		s.systemAudit(ctx, c, "retention_delete", nil, meta)
		s.log.Info("timeout-paused capsule deleted after its retention", "capsule_id", c.ID, "paused_at", c.PausedAt)
	}
	return errors.Join(errs...)
}

// Sweep runs TimeoutSweep and RetentionSweep (one background pass).
func (s *Service) Sweep(ctx context.Context) error {
	return errors.Join(s.TimeoutSweep(ctx), s.RetentionSweep(ctx))
}
