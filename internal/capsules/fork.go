package capsules

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// Fork bounds.
const (
	MinForkCount = 1
	MaxForkCount = 20
)

// ForkResult is a fork: the copies (their access tokens are in Created)
// and the base they share.
type ForkResult struct {
	Copies []Created
	// Base is the template the copies were made from: the original's files
	// and, where its host keeps memory, its processes, stored once and
	// shared by every copy (named fork-<capsule>-<random>; it can be
	// deleted once no capsule uses it).
	Base store.Template
	// MemoryKept says whether every copy runs the original's processes
	// (false: the checkpoint has no memory, or a copy's host could not
	// restore it and it booted again from the files).
	MemoryKept bool
}

// Fork makes count copies of running or paused capsule id: its files and,
// where its host keeps memory, its running processes (a checkpoint of the
// original that leaves it running, restored count times under new ids,
// each with its own host-side network and disk). The copies share the
// checkpoint's blocks (one base template) and inherit the original's
// resources, env, network, metadata, timeout and life cycle. A paused
// original is resumed for the checkpoint and paused again after. Refusals
// (count out of range, unknown capsule, not running or paused) change
// nothing; a copy that fails undoes the copies made before it and the base.
func (s *Service) Fork(ctx context.Context, sc Scope, id string, count int) (ForkResult, error) {
	if count < MinForkCount || count > MaxForkCount {
		return ForkResult{}, errorf(KindInvalid, "count must be between %d and %d", MinForkCount, MaxForkCount)
	}
	if sc.anyTeam() {
		return ForkResult{}, errorf(KindInvalid, "a capsule is forked by its team")
	}
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return ForkResult{}, err
	}
	wasPaused, toDisk := c.Status.IsPaused(), c.Status == store.CapsuleHibernated
	if c.Status != store.CapsuleRunning && !wasPaused {
		return ForkResult{}, errorf(KindConflict, "capsule %s is %s; only a running or paused capsule can be forked", c.ID, c.Status)
	}
	if wasPaused {
		reason := c.PauseReason
		if _, err := s.Resume(ctx, SystemScope(), c.ID, nil); err != nil {
			return ForkResult{}, err
		}
		defer func() {
			// Back to sleep as it was (a timeout pause stays one).
			sys := SystemScope()
			sys.shutdown = reason == store.PauseReasonShutdown
			if _, err := s.Pause(context.WithoutCancel(ctx), sys, c.ID, toDisk); err != nil {
				s.log.Warn("fork: pause the original again", "capsule_id", c.ID, "err", err)
				return
			}
			if reason == store.PauseReasonTimeout {
				_ = s.cfg.Store.SetCapsulePauseReason(context.WithoutCancel(ctx), c.TeamID, c.ID, reason)
			}
		}()
	}
	_, host, err := s.agentFor(ctx, c)
	if err != nil {
		return ForkResult{}, err
	}
	suffix := strings.TrimPrefix(c.ID, store.PrefixCapsule+"-")
	if len(suffix) > 40 {
		suffix = suffix[:40]
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "fork-" + suffix + "-" + hex.EncodeToString(rnd[:])
	base := store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: c.TeamID, Name: name, SourceCapsuleID: c.ID}
	base, _, err = s.SnapshotToTemplate(ctx, host, c.ID, base, true, "")
	if err != nil {
		s.audit(ctx, sc, c, "fork", err, map[string]any{"count": count})
		return ForkResult{}, err
	}
	out := ForkResult{Base: base, MemoryKept: base.Memory}
	undo := func() {
		bg := context.WithoutCancel(ctx)
		for _, cp := range out.Copies {
			if err := s.Destroy(bg, SystemScope(), cp.Capsule.ID, DestroyOptions{}); err != nil {
				s.log.Warn("fork: undo a copy", "capsule_id", cp.Capsule.ID, "err", err)
			}
		}
		if err := s.DeleteTemplate(bg, base); err != nil {
			s.log.Warn("fork: delete the base", "template_id", base.ID, "err", err)
		}
	}
	tsc := TeamScope(c.TeamID, sc.UserID, sc.Actor)
	for range count {
		tid, vcpus, mem, disk, timeout := base.ID, c.VCPUs, c.MemoryMB, c.DiskSizeMB, c.TimeoutSec
		internet, onTimeout, autoResume := c.AllowInternet, c.OnTimeout, c.AutoResume
		cr, err := s.Create(ctx, tsc, CreateRequest{
			Template: &tid, VCPUs: &vcpus, MemoryMB: &mem, DiskSizeMB: &disk, TimeoutSec: &timeout,
			Env: c.Env, Public: c.Public, AllowInternet: &internet, Metadata: c.Metadata, Network: c.Network,
			OnTimeout: &onTimeout, AutoResume: &autoResume, Isolation: c.Isolation,
		})
		if err != nil {
			undo()
			s.audit(ctx, sc, c, "fork", err, map[string]any{"count": count})
			return ForkResult{}, err
		}
		out.Copies = append(out.Copies, cr)
	}
	ids := make([]string, 0, len(out.Copies))
	for _, cp := range out.Copies {
		ids = append(ids, cp.Capsule.ID)
		// A copy its host could not restore from the checkpoint booted
		// from the files.
		out.MemoryKept = out.MemoryKept && cp.Restored
	}
	s.audit(ctx, sc, c, "fork", nil, map[string]any{"count": count, "copies": ids, "base_template_id": base.ID, "memory_kept": base.Memory})
	s.cfg.Events.Emit(ctx, c.TeamID, events.CapsuleForked, c.ID, map[string]any{"copies": ids, "base_template_id": base.ID, "memory_kept": out.MemoryKept})
	return out, nil
}
