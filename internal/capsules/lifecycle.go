package capsules

import (
	"context"
	"errors"
	"math"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Conn is a running capsule and the client of the agent that runs it, for
// the data plane (files, processes, terminals, metrics).
type Conn struct {
	Capsule store.Capsule
	Agent   hostagentv1connect.HostAgentServiceClient
	// Host is the capsule's host (for plain HTTP calls to its agent, e.g.
	// the envd route file transfers take).
	Host store.Host
}

// agentFor returns the client of c's host; an unavailable host is a
// friendly unavailable error.
func (s *Service) agentFor(ctx context.Context, c store.Capsule) (hostagentv1connect.HostAgentServiceClient, store.Host, error) {
	if c.HostID == "" {
		return nil, store.Host{}, errorf(KindConflict, "capsule %s is not placed on a host", c.ID)
	}
	h, err := s.cfg.Store.GetHost(ctx, c.HostID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, store.Host{}, &Error{Kind: KindUnavailable, Message: MsgAgentUnavailable, Err: err}
	}
	if err != nil {
		return nil, store.Host{}, err
	}
	if h.Status == store.HostUnavailable {
		return nil, h, &Error{Kind: KindUnavailable, Message: MsgAgentUnavailable}
	}
	return s.cfg.Agents.Client(h), h, nil
}

// Connect returns capsule id, which must be running, and its agent.
func (s *Service) Connect(ctx context.Context, sc Scope, id string) (Conn, error) {
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return Conn{}, err
	}
	if c.Status.IsPaused() && c.AutoResume {
		if c, err = s.wake(ctx, sc, c); err != nil {
			return Conn{Capsule: c}, err
		}
	}
	if c.Status != store.CapsuleRunning {
		if c.Status.IsPaused() {
			return Conn{Capsule: c}, errorf(KindConflict, "capsule %s is %s; resume it first", c.ID, c.Status)
		}
		return Conn{Capsule: c}, errorf(KindConflict, "capsule %s is %s, not running", c.ID, c.Status)
	}
	cl, h, err := s.agentFor(ctx, c)
	return Conn{Capsule: c, Agent: cl, Host: h}, err
}

// ExecRequest is a unary command run.
type ExecRequest struct {
	Cmd        string
	Args       []string
	Env        map[string]string
	Cwd        string
	User       string
	TimeoutSec int64
	Stdin      []byte
}

// Validate checks a command's fields (sizes, NULs, environment).
func (e ExecRequest) Validate() error {
	switch {
	case e.Cmd == "" || len(e.Cmd) > 4096 || strings.ContainsRune(e.Cmd, 0):
		return errorf(KindInvalid, "cmd is required (at most 4096 bytes, no NUL)")
	case len(e.Args) > 4096:
		return errorf(KindInvalid, "too many args")
	case e.TimeoutSec < 0 || e.TimeoutSec > 24*3600:
		return errorf(KindInvalid, "timeout_sec must be between 0 and 86400")
	case len(e.Cwd) > 4096 || strings.ContainsRune(e.Cwd, 0):
		return errorf(KindInvalid, "cwd is too long or contains NUL")
	case len(e.User) > 64:
		return errorf(KindInvalid, "user is too long")
	}
	for _, a := range e.Args {
		if strings.ContainsRune(a, 0) {
			return errorf(KindInvalid, "args must not contain NUL")
		}
	}
	return ValidEnv(e.Env)
}

// Proto is the agent request for e in capsule id.
func (e ExecRequest) Proto(id string) *pb.ExecRequest {
	return &pb.ExecRequest{
		CapsuleId: id, Cmd: e.Cmd, Args: e.Args, Env: e.Env, Cwd: e.Cwd, User: e.User,
		TimeoutSec: int32(min(e.TimeoutSec, math.MaxInt32)), Stdin: e.Stdin, //nolint:gosec // bounded
	}
}

// Exec runs a command to its end in a running capsule (bounded by its
// timeout plus 10 s, or the service's ExecTimeout).
func (s *Service) Exec(ctx context.Context, sc Scope, id string, req ExecRequest) (*pb.ExecResponse, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	conn, err := s.Connect(ctx, sc, id)
	if err != nil {
		return nil, err
	}
	d := s.cfg.ExecTimeout
	if req.TimeoutSec > 0 {
		d = time.Duration(req.TimeoutSec)*time.Second + 10*time.Second
	}
	ectx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	resp, err := conn.Agent.Exec(ectx, connect.NewRequest(req.Proto(conn.Capsule.ID)))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			s.markGoneIfMissing(ctx, conn.Agent, conn.Capsule, "the capsule vanished from its host")
		}
		return nil, AgentError(err)
	}
	return resp.Msg, nil
}

// Result is a capsule after a pause or resume.
type Result struct {
	Capsule store.Capsule
	// MemoryKept says whether the capsule's processes and memory were (or
	// will be) kept: a pause to disk without a working CRIU keeps files
	// only, and the capsule boots again on resume.
	MemoryKept bool
}

// markGoneIfMissing asks the agent whether c still exists after a failed
// operation; a capsule that is gone (or broken) becomes error with reason.
func (s *Service) markGoneIfMissing(ctx context.Context, cl hostagentv1connect.HostAgentServiceClient, c store.Capsule, reason string) {
	ctx = context.WithoutCancel(ctx)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cl.PingCapsule(pctx, connect.NewRequest(&pb.PingCapsuleRequest{CapsuleId: c.ID}))
	gone := connect.CodeOf(err) == connect.CodeNotFound ||
		(err == nil && (resp.Msg.GetState() == pb.CapsuleState_CAPSULE_STATE_ERROR || resp.Msg.GetState() == pb.CapsuleState_CAPSULE_STATE_STOPPED))
	if !gone {
		return
	}
	if ok, err := s.transition(ctx, c, store.CapsuleError, reason); err != nil || !ok {
		s.log.Warn("could not mark vanished capsule as error", "capsule_id", c.ID, "applied", ok, "err", err)
		return
	}
	s.log.Warn("capsule vanished from its host; marked error", "capsule_id", c.ID, "host_id", c.HostID)
}

// settle moves c (in c.Status) to `to` after its agent did, and returns
// the capsule as stored; a capsule changed meanwhile is a conflict.
func (s *Service) settle(ctx context.Context, c store.Capsule, to store.CapsuleStatus) (store.Capsule, error) {
	ctx = context.WithoutCancel(ctx)
	ok, err := s.transition(ctx, c, to, "")
	if err != nil {
		return c, err
	}
	if !ok {
		// The row moved while the agent worked (the reconciler aligning a
		// host that just came back, say). The agent has just done the
		// action, so what it did wins over what was read before it: move
		// from the state now stored, once, if the state machine allows it.
		cur, gerr := s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID)
		switch {
		case gerr != nil:
			return c, gerr
		case cur.Status == to:
			return cur, nil
		}
		if ok, err = s.transition(ctx, cur, to, ""); err != nil || !ok {
			return c, errorf(KindConflict, "capsule %s changed state during the operation", c.ID)
		}
	}
	return s.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID)
}

// Pause freezes a running capsule in memory, or to disk with toDisk
// (hibernated). A failed pause checks whether the capsule still exists
// and marks it error if not.
func (s *Service) Pause(ctx context.Context, sc Scope, id string, toDisk bool) (Result, error) {
	// A paused capsule is not woken (auto_resume) only to be paused again.
	if c, err := s.Get(ctx, sc, id); err == nil && c.Status.IsPaused() {
		return Result{}, errorf(KindConflict, "capsule %s is already %s", c.ID, c.Status)
	}
	conn, err := s.Connect(ctx, sc, id)
	if err != nil {
		return Result{}, err
	}
	c, cl := conn.Capsule, conn.Agent
	resp, err := cl.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: c.ID, ToDisk: toDisk}))
	s.audit(ctx, sc, c, "pause", err, map[string]any{"to_disk": toDisk})
	if err != nil {
		s.markGoneIfMissing(ctx, cl, c, "the capsule vanished from its host during a pause")
		return Result{}, AgentError(err)
	}
	to, kept := store.CapsulePaused, true // frozen in memory
	if resp.Msg.GetCapsule().GetState() == pb.CapsuleState_CAPSULE_STATE_HIBERNATED || toDisk {
		to, kept = store.CapsuleHibernated, resp.Msg.GetMemoryKept()
	}
	if to == store.CapsuleHibernated {
		s.recordExport(ctx, c, resp.Msg) // move.go
	}
	c, err = s.settle(ctx, c, to)
	if err == nil {
		c.PauseReason = store.PauseReasonUser
		if sc.shutdown {
			c.PauseReason = store.PauseReasonShutdown
		}
		err = s.cfg.Store.SetCapsulePauseReason(context.WithoutCancel(ctx), c.TeamID, c.ID, c.PauseReason)
	}
	return Result{Capsule: c, MemoryKept: kept}, err
}

// Resume brings a paused or hibernated capsule back, with a new timeout
// (nil: its own).
func (s *Service) Resume(ctx context.Context, sc Scope, id string, timeoutSec *int64) (Result, error) {
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return Result{}, err
	}
	d := limits.Defaults
	timeout, err := intField("timeout_sec", timeoutSec, c.TimeoutSec, d.MinTimeoutSec, d.MaxTimeoutSec)
	if err != nil {
		return Result{}, err
	}
	if !c.Status.IsPaused() {
		return Result{}, errorf(KindConflict, "capsule %s is %s, not paused", c.ID, c.Status)
	}
	// Paused to disk on a host that is away or draining: it resumes on
	// another host (move.go).
	if c.Status == store.CapsuleHibernated {
		away, reachable, err := s.hostState(ctx, c)
		if err != nil {
			return Result{}, err
		}
		if away {
			mr, err := s.move(ctx, sc, c, true, timeout)
			// A draining host that is still up resumes it when no other
			// host can (the drain moves it later).
			if err == nil || !reachable || kindOf(err) != KindUnavailable {
				return Result{Capsule: mr.Capsule, MemoryKept: mr.MemoryKept}, err
			}
			s.log.Info("resume: no other host takes the capsule; resuming it on its draining host", "capsule_id", c.ID, "err", err)
		}
	}
	return s.resumeHere(ctx, sc, c, timeout)
}

// resumeHere resumes paused capsule c on its own host.
func (s *Service) resumeHere(ctx context.Context, sc Scope, c store.Capsule, timeout int64) (Result, error) {
	cl, _, err := s.agentFor(ctx, c)
	if err != nil {
		return Result{}, err
	}
	resp, err := cl.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: c.ID, TimeoutSec: agentTimeout(c, timeout)}))
	s.audit(ctx, sc, c, "resume", err, nil)
	if err != nil {
		s.markGoneIfMissing(ctx, cl, c, "the capsule vanished from its host during a resume")
		return Result{}, AgentError(err)
	}
	t := store.Now().Add(time.Duration(timeout) * time.Second)
	if e := resp.Msg.GetCapsule().GetExpiresAt(); e > 0 {
		t = store.Truncate(time.Unix(e, 0))
	}
	_ = s.cfg.Store.SetCapsuleTimeout(context.WithoutCancel(ctx), c.TeamID, c.ID, timeout, &t)
	_ = s.cfg.Store.SetCapsulePauseReason(context.WithoutCancel(ctx), c.TeamID, c.ID, "")
	kept := true // thawed from the freezer
	if c.Status == store.CapsuleHibernated {
		kept = resp.Msg.GetCapsule().GetMemoryKept()
	}
	c, err = s.settle(ctx, c, store.CapsuleRunning)
	return Result{Capsule: c, MemoryKept: kept}, err
}

// SetTimeout gives a running capsule a new timeout from now.
func (s *Service) SetTimeout(ctx context.Context, sc Scope, id string, timeoutSec *int64) (store.Capsule, error) {
	if timeoutSec == nil {
		return store.Capsule{}, errorf(KindInvalid, "timeout_sec is required")
	}
	d := limits.Defaults
	timeout, err := intField("timeout_sec", timeoutSec, 0, d.MinTimeoutSec, d.MaxTimeoutSec)
	if err != nil {
		return store.Capsule{}, err
	}
	conn, err := s.Connect(ctx, sc, id)
	if err != nil {
		return store.Capsule{}, err
	}
	c, cl := conn.Capsule, conn.Agent
	resp, err := cl.SetCapsuleTimeout(ctx, connect.NewRequest(&pb.SetCapsuleTimeoutRequest{CapsuleId: c.ID, TimeoutSec: agentTimeout(c, timeout)}))
	if err != nil {
		s.markGoneIfMissing(ctx, cl, c, "the capsule vanished from its host")
		return store.Capsule{}, AgentError(err)
	}
	exp := store.Truncate(time.Unix(resp.Msg.GetExpiresAt(), 0))
	if resp.Msg.GetExpiresAt() <= 0 {
		exp = store.Now().Add(time.Duration(timeout) * time.Second)
	}
	if err := s.cfg.Store.SetCapsuleTimeout(ctx, c.TeamID, c.ID, timeout, &exp); err != nil {
		return store.Capsule{}, err
	}
	c.TimeoutSec, c.ExpiresAt = timeout, &exp
	return c, nil
}

// SetPublic opens (or closes) the capsule's ports to anyone with the URL.
func (s *Service) SetPublic(ctx context.Context, sc Scope, id string, public *bool) (store.Capsule, error) {
	if public == nil {
		return store.Capsule{}, errorf(KindInvalid, "public is required")
	}
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return c, err
	}
	if err := s.cfg.Store.SetCapsulePublic(ctx, c.TeamID, c.ID, *public); err != nil {
		return c, err
	}
	c.Public = *public
	s.audit(ctx, sc, c, "set_public", nil, map[string]any{"public": c.Public})
	return c, nil
}

// destroyOnAgent destroys c on its host; a capsule the agent no longer
// knows counts as destroyed. unreachable reports that the host is known
// but unavailable (so the call was not even tried).
func (s *Service) destroyOnAgent(ctx context.Context, c store.Capsule) (unreachable bool, err error) {
	if c.HostID == "" || c.Status == store.CapsuleStopped {
		return false, nil
	}
	cl, h, err := s.agentFor(ctx, c)
	if err != nil {
		return h.ID != "", err
	}
	_, err = cl.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: c.ID}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return false, AgentError(err)
	}
	return false, nil
}

// DestroyOptions tune Destroy.
type DestroyOptions struct {
	// Force (platform admins) forgets the capsule even when its host
	// cannot be reached to destroy it.
	Force bool
}

// Destroy destroys capsule id on its host and forgets it. A capsule in
// error or missing whose host is unreachable is forgotten too (it is
// gone); with Force (admins only), any capsule is.
func (s *Service) Destroy(ctx context.Context, sc Scope, id string, opt DestroyOptions) error {
	if opt.Force && !sc.anyTeam() {
		return errorf(KindPermissionDenied, "only a platform admin can force a destroy")
	}
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return err
	}
	unreachable, agentErr := s.destroyOnAgent(ctx, c)
	if agentErr != nil {
		// The host is gone and so is the capsule: forget it.
		lost := unreachable && (c.Status == store.CapsuleError || c.Status == store.CapsuleMissing)
		if !opt.Force && !lost {
			if sc.admin {
				s.audit(ctx, sc, c, "delete", agentErr, nil)
			}
			return agentErr
		}
	}
	err = s.cfg.Store.DeleteCapsule(context.WithoutCancel(ctx), c.TeamID, c.ID)
	var meta map[string]any
	if sc.admin {
		meta = map[string]any{"force": opt.Force, "agent_destroyed": agentErr == nil}
	}
	if err != nil {
		if sc.admin {
			s.audit(ctx, sc, c, "delete", err, meta)
		}
		return err
	}
	s.gone(c.HostID, c.ID)
	s.audit(ctx, sc, c, "delete", nil, meta)
	s.cfg.Events.Emit(ctx, c.TeamID, events.CapsuleDestroyed, c.ID, map[string]any{"previous_status": string(c.Status)})
	return nil
}

// TeamDeletion reports a team delete's capsules.
type TeamDeletion struct {
	Capsules     []string // every capsule the team had
	NotDestroyed []string // those whose host could not destroy them (its reconciler will)
}

// DeleteTeam destroys every capsule of team teamID on its host
// (best-effort: an unreachable host's capsules are forgotten and its
// reconciler cleans them up), then deletes the team with everything in it
// (members, invites, keys, templates, builds, capsules) in one cascade.
func (s *Service) DeleteTeam(ctx context.Context, teamID string) (TeamDeletion, error) {
	ctx = context.WithoutCancel(ctx)
	var (
		out    TeamDeletion
		cursor string
	)
	for {
		caps, next, err := s.cfg.Store.ListCapsules(ctx, teamID, store.CapsuleFilter{Cursor: cursor, Limit: 500})
		if err != nil {
			return out, err
		}
		for _, c := range caps {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if _, err := s.destroyOnAgent(dctx, c); err != nil {
				s.log.WarnContext(ctx, "team delete: capsule not destroyed on its host", "team_id", teamID, "capsule_id", c.ID, "host_id", c.HostID, "err", err)
				out.NotDestroyed = append(out.NotDestroyed, c.ID)
			}
			cancel()
			out.Capsules = append(out.Capsules, c.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if err := s.cfg.Store.DeleteTeam(ctx, teamID); err != nil {
		return out, err
	}
	for _, id := range out.Capsules {
		s.gone("", id)
	}
	return out, nil
}

// MarkHostMissing marks the live capsules of a host that went silent
// missing.
func (s *Service) MarkHostMissing(ctx context.Context, hostID string) error {
	caps, err := s.cfg.Store.ListCapsulesByHost(ctx, hostID)
	if err != nil {
		return err
	}
	for _, c := range caps {
		switch c.Status {
		case store.CapsulePending, store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused:
			if _, err := s.transition(ctx, c, store.CapsuleMissing, ""); err != nil {
				return err
			}
		}
	}
	return nil
}

// Align records the state c's agent reports (the reconciler). A move the
// state machine does not allow is skipped; it reports whether c changed.
func (s *Service) Align(ctx context.Context, c store.Capsule, want store.CapsuleStatus, agentReason string) (bool, error) {
	reason := ""
	if want == store.CapsuleError {
		reason = "its host reports the capsule failed"
		if agentReason != "" {
			reason = clip(agentReason) // e.g. "envd has not answered for 10 s"
		}
	}
	ok, err := s.alignTo(ctx, c, want, reason)
	if ok && err == nil && want == store.CapsuleHibernated && c.MoveRecord != "" {
		// Paused to disk without this service seeing the pause (an agent
		// that committed it and then crashed): the export record of an
		// earlier pause names a snapshot that one superseded.
		if err := s.cfg.Store.SetCapsuleMoveRecord(context.WithoutCancel(ctx), c.TeamID, c.ID, ""); err != nil {
			s.log.Warn("could not clear a stale export record", "capsule_id", c.ID, "err", err)
		}
	}
	return ok, err
}

// Expire records that c's host reaped it at the end of its timeout.
func (s *Service) Expire(ctx context.Context, c store.Capsule) (bool, error) {
	return s.alignTo(ctx, c, store.CapsuleStopped, "")
}

// MarkGone records that c is no longer on its host.
func (s *Service) MarkGone(ctx context.Context, c store.Capsule, reason string) (bool, error) {
	return s.alignTo(ctx, c, store.CapsuleError, reason)
}

func (s *Service) alignTo(ctx context.Context, c store.Capsule, want store.CapsuleStatus, reason string) (bool, error) {
	if want == c.Status {
		return false, nil
	}
	if !CanTransition(c.Status, want) {
		s.log.Debug("state change not allowed; left alone", "capsule_id", c.ID, "from", c.Status, "to", want)
		return false, nil
	}
	return s.transition(ctx, c, want, reason)
}
