package hostagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Moves between hosts (docs/FLEET.md, "Moving capsules"). A capsule paused
// to disk on a host whose snapshot store every host shares is portable:
// its export record is everything the agent keeps about it (the snapshot,
// template, limits, env, network policy, envd access token, defaults,
// timeout), and another host's AdoptCapsule turns it into a hibernated
// capsule there. The old host, if it comes back, is told to
// ReleaseCapsule: its local state goes, the snapshot (now owned by the
// new host) stays.

// exportVersion is the version of the export record's format.
const exportVersion = 1

// exported is the export record: an agent record in phase hibernated.
type exported struct {
	Version int    `json:"version"`
	Record  record `json:"record"`
}

// movable reports whether a hibernated capsule of this isolation can move
// ("" when it can, else why not).
func (a *Agent) movable(rec record) string {
	if _, ok := a.driver.(runtime.Mover); !ok {
		return "this host's runtime cannot move capsules"
	}
	iso := rec.Spec.Isolation
	if iso == "" {
		iso = runtime.IsolationContainer
	}
	if !slices.Contains(a.cfg.SharedSnapshotIsolations, iso) {
		return fmt.Sprintf("the host's snapshot store for %s capsules is local to it (no shared --snapshot-store)", iso)
	}
	return ""
}

// export returns the export record of a hibernated capsule, or why it has
// none.
func (a *Agent) export(rec record) ([]byte, string) {
	if rec.Phase != phaseHibernated || rec.Snapshot == nil {
		return nil, "the capsule is not paused to disk"
	}
	if why := a.movable(rec); why != "" {
		return nil, why
	}
	b, err := json.Marshal(exported{Version: exportVersion, Record: rec})
	if err != nil {
		return nil, err.Error()
	}
	return b, ""
}

func parseExport(b []byte) (record, error) {
	var e exported
	if err := json.Unmarshal(b, &e); err != nil {
		return record{}, fmt.Errorf("%w: export record: %w", runtime.ErrInvalidSpec, err)
	}
	r := e.Record
	switch {
	case e.Version != exportVersion:
		return record{}, fmt.Errorf("%w: export record version %d (want %d)", runtime.ErrInvalidSpec, e.Version, exportVersion)
	case r.Phase != phaseHibernated || r.Snapshot == nil || len(r.Snapshot.Keys) == 0:
		return record{}, fmt.Errorf("%w: export record of a capsule that is not paused to disk", runtime.ErrInvalidSpec)
	case r.AccessToken == "":
		return record{}, fmt.Errorf("%w: export record without an access token", runtime.ErrInvalidSpec)
	}
	if err := validID(r.ID); err != nil {
		return record{}, fmt.Errorf("%w: %w", runtime.ErrInvalidSpec, err)
	}
	if r.Snapshot.CapsuleID != r.ID {
		return record{}, fmt.Errorf("%w: export record's snapshot is of capsule %q", runtime.ErrInvalidSpec, r.Snapshot.CapsuleID)
	}
	return r, nil
}

// adoptCapsule takes over a capsule another host paused to the shared
// store. Adopting a capsule already hibernated here from the same snapshot
// is a no-op (a retried move); with resume it is then restored.
func (a *Agent) adoptCapsule(ctx context.Context, export []byte, resume bool, timeoutSec int, checksum string) (record, runtime.Info, error) {
	rec, err := parseExport(export)
	if err != nil {
		return record{}, runtime.Info{}, err
	}
	if why := a.movable(rec); why != "" {
		return record{}, runtime.Info{}, fmt.Errorf("adopt capsule %s: %s: %w", rec.ID, why, runtime.ErrInvalidState)
	}
	mv := a.driver.(runtime.Mover) //nolint:errcheck,forcetypeassert // movable checked it
	if err := a.waitTeardownOf(ctx, rec.ID); err != nil {
		return record{}, runtime.Info{}, err
	}
	log := a.log.With("capsule_id", rec.ID, "snapshot", rec.Snapshot.ID)
	t0 := time.Now()
	// Created here now: the control plane's reconciler leaves a capsule
	// it does not place on this host alone for a settle time from its
	// created_at — the moment between this adopt and the store's
	// re-homing must not look like an old orphan.
	rec.CreatedAt = time.Now().UTC()
	c := &capsule{rec: rec}
	c.op.Lock()
	a.mu.Lock()
	if old := a.caps[rec.ID]; old != nil {
		a.mu.Unlock()
		c.op.Unlock()
		orec, _, _ := old.snapshot()
		if orec.Phase != phaseHibernated || orec.Snapshot == nil || orec.Snapshot.ID != rec.Snapshot.ID {
			return record{}, runtime.Info{}, fmt.Errorf("capsule %s is %s here: %w", rec.ID, orec.Phase, runtime.ErrExists)
		}
		if !resume {
			_, info, _ := old.snapshot()
			return orec, info, nil
		}
		return a.resumeCapsuleAs(ctx, rec.ID, timeoutSec, true)
	}
	a.caps[rec.ID] = c
	a.mu.Unlock()
	fail := func(err error) (record, runtime.Info, error) {
		a.forget(c)
		c.op.Unlock()
		return record{}, runtime.Info{}, err
	}
	if err := a.ensureTemplate(ctx, rec.Template, checksum); err != nil {
		return fail(err)
	}
	info, err := mv.Adopt(ctx, *rec.Snapshot)
	if err != nil {
		return fail(fmt.Errorf("adopt capsule %s: %w", rec.ID, err))
	}
	c.mu.Lock()
	c.info = info
	c.rec.ExpiresAt = time.Time{}
	c.mu.Unlock()
	if err := a.save(c, nil); err != nil {
		a.stopSampler(c)
		if rerr := mv.Release(context.WithoutCancel(ctx), rec.ID); rerr != nil && !errors.Is(rerr, runtime.ErrNotFound) {
			log.Error("release after a failed adopt", "err", rerr)
		}
		return fail(err)
	}
	c.op.Unlock()
	log.Info("capsule adopted from another host", "took_ms", time.Since(t0).Milliseconds())
	if !resume {
		r, i, _ := c.snapshot()
		return r, i, nil
	}
	return a.resumeCapsuleAs(ctx, rec.ID, timeoutSec, true)
}

// releaseLocal removes c from this host without deleting its snapshot
// objects (a failed adopt-and-resume: the capsule's old host still owns
// it), and forgets it.
func (a *Agent) releaseLocal(c *capsule) {
	a.stopSampler(c)
	id := c.rec.ID
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if mv, ok := a.driver.(runtime.Mover); ok {
		if err := mv.Release(ctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			a.log.Error("release after a failed adopt", "capsule_id", id, "err", err)
		}
	}
	a.forget(c)
}

// destroyUnadoptable removes a capsule found at start that the agent
// cannot take back. A snapshotted one without agent state is an adopt cut
// short (the driver recorded it, the agent had not yet): it is released,
// never destroyed, since its snapshot belongs to the host it came from.
func (a *Agent) destroyUnadoptable(ctx context.Context, rec *record, info runtime.Info) error {
	if mv, ok := a.driver.(runtime.Mover); ok && rec == nil && info.State == runtime.StateSnapshotted {
		return mv.Release(ctx, info.ID)
	}
	return a.driver.Destroy(ctx, info.ID)
}

// releaseCapsule forgets a capsule another host now owns, leaving its
// snapshots in the shared store: a hibernated copy after a move, or (with
// running) a copy a move left here running when its adopt's answer was
// lost (an agent killed after it resumed the capsule) — destroying that
// one would delete the snapshot the store's copy on its old host still
// resumes from.
func (a *Agent) releaseCapsule(ctx context.Context, id string, running bool) error {
	c, err := a.lookup(id)
	if err != nil {
		return err
	}
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, _ := c.snapshot()
	if c.gone {
		return fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	switch {
	case rec.Phase == phaseStarting:
		return fmt.Errorf("release capsule %s: it is %s: %w", id, rec.Phase, runtime.ErrInvalidState)
	case rec.Phase != phaseHibernated && !running:
		return fmt.Errorf("release capsule %s: it is %s, not paused to disk: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	if len(rec.Spec.Volumes) > 0 {
		// Capsules with volumes never move (movable): such a capsule is
		// this host's own.
		return fmt.Errorf("release capsule %s: it has volumes; capsules with volumes do not move: %w", id, runtime.ErrInvalidState)
	}
	mv, ok := a.driver.(runtime.Mover)
	if !ok {
		return fmt.Errorf("release capsule %s: %w", id, runtime.ErrNotSupported)
	}
	a.stopSampler(c)
	a.proxy.Evict(id)
	if err := mv.Release(ctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return fmt.Errorf("release capsule %s: %w", id, err)
	}
	a.forget(c)
	a.log.Info("capsule released to another host", "capsule_id", id)
	return nil
}

func (s service) AdoptCapsule(ctx context.Context, req *connect.Request[pb.AdoptCapsuleRequest]) (*connect.Response[pb.AdoptCapsuleResponse], error) {
	m := req.Msg
	if len(m.GetExport()) == 0 {
		return nil, invalid("export is required")
	}
	rec, info, err := s.a.adoptCapsule(ctx, m.GetExport(), m.GetResume(), int(m.GetTimeoutSec()), m.GetTemplateChecksum())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.AdoptCapsuleResponse{Capsule: capsuleProto(rec, info)}), nil
}

func (s service) ReleaseCapsule(ctx context.Context, req *connect.Request[pb.ReleaseCapsuleRequest]) (*connect.Response[pb.ReleaseCapsuleResponse], error) {
	if req.Msg.GetCapsuleId() == "" {
		return nil, invalid("capsule_id is required")
	}
	if err := s.a.releaseCapsule(ctx, req.Msg.GetCapsuleId(), req.Msg.GetRunning()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ReleaseCapsuleResponse{}), nil
}

// SetDraining empties the driver's warm pools while the host drains (the
// control plane says so in its heartbeat answers) and refills them to
// Config.WarmPools once it no longer does: warm capsules are not capsules
// yet, so a drain discards them instead of moving them.
func (a *Agent) SetDraining(on bool) {
	wp, ok := a.driver.(runtime.WarmPooler)
	if !ok || len(a.cfg.WarmPools) == 0 {
		return
	}
	a.mu.Lock()
	changed := a.draining != on
	a.draining = on
	a.mu.Unlock()
	if !changed {
		return
	}
	for tmpl, n := range a.cfg.WarmPools {
		if on {
			n = 0
		}
		wp.SetWarmPool(tmpl, n)
	}
	a.log.Info("warm pools follow the host's drain", "draining", on)
}
