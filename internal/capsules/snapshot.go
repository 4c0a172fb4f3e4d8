package capsules

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// SnapshotRequest turns a running capsule into a template.
type SnapshotRequest struct {
	// Name of the new team template ("name" or "name:tag"; ":latest" is the
	// same as no tag). Required; must not be taken in the team.
	Name string
	// Memory keeps the capsule's processes too, where its host can (nil:
	// true); capsules created from the template then start with them
	// running.
	Memory *bool
}

// Snapshot turns running capsule id into a template of its team, named
// req.Name: its files and, where the host can keep them, its processes'
// memory. The capsule keeps running (it is frozen for the copy). The
// template is stored in the shared template store when the hosts have one,
// so capsules of it can run on any host; otherwise it lives on the
// capsule's host and capsules of it are placed there.
func (s *Service) Snapshot(ctx context.Context, sc Scope, id string, req SnapshotRequest) (store.Template, SnapshotResult, error) {
	name := NormalizeTemplateName(req.Name)
	if name == "" || !templateNameRE.MatchString(name) {
		return store.Template{}, SnapshotResult{}, errorf(KindInvalid, "name must be a template name: lower-case letters, digits, . _ - (at most 64), with an optional :tag")
	}
	c, err := s.Get(ctx, sc, id)
	if err != nil {
		return store.Template{}, SnapshotResult{}, err
	}
	if c.Status != store.CapsuleRunning {
		return store.Template{}, SnapshotResult{}, errorf(KindConflict, "capsule %s is %s, not running", c.ID, c.Status)
	}
	if t, err := s.cfg.Store.GetTemplateByName(ctx, c.TeamID, name); err == nil && t.TeamID == c.TeamID {
		return store.Template{}, SnapshotResult{}, errorf(KindConflict, "the team already has a template named %q", name)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Template{}, SnapshotResult{}, err
	}
	_, host, err := s.agentFor(ctx, c)
	if err != nil {
		return store.Template{}, SnapshotResult{}, err
	}
	memory := req.Memory == nil || *req.Memory
	tmpl := store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: c.TeamID, Name: name, SourceCapsuleID: c.ID}
	t, res, err := s.SnapshotToTemplate(ctx, host, c.ID, tmpl, memory, "")
	meta := map[string]any{"template": name, "memory": memory}
	if err == nil {
		meta["template_id"], meta["memory_kept"] = t.ID, t.Memory
		if res.MemoryReason != "" {
			meta["memory_reason"] = res.MemoryReason
		}
	}
	s.audit(ctx, sc, c, "snapshot", err, meta)
	return t, res, err
}

// SnapshotResult says what SnapshotToTemplate kept.
type SnapshotResult struct {
	// MemoryReason says why memory was not kept when it was asked for.
	MemoryReason string
}

// SnapshotToTemplate snapshots capsule capsuleID (running on host h, a
// user capsule or a platform-internal one such as a build's) into template
// tmpl (ID, TeamID, Name, Public set by the caller) and records it in the
// store. With memory, the processes are kept where the host can
// (tmpl.Memory in the result says whether). It is the one way a capsule
// becomes a template: the REST and E2B snapshot routes and the build runner
// (a template whose recipe leaves a START process running) use it. If
// anything fails nothing stays: the host's copy and the shared archive are
// removed, no row is written. The capsule keeps running. runConfig (JSON
// of the host's template.RunConfig, "" for none) is what capsules of the
// template start with: a build's ENV/WORKDIR/USER defaults and START/READY.
func (s *Service) SnapshotToTemplate(ctx context.Context, h store.Host, capsuleID string, tmpl store.Template, memory bool, runConfig string) (store.Template, SnapshotResult, error) {
	var res SnapshotResult
	tmpl.HostID = h.ID
	ag := s.cfg.Agents.Client(h)
	// Hosts (and the shared store) know a template by its id — a public
	// one too when it is shared, since its name may be reused after a
	// delete — except a public template that stays on its host, which is
	// known by name (HostTemplateName).
	hostName := tmpl.ID
	if tmpl.Public {
		info, err := ag.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		if err != nil {
			return store.Template{}, res, AgentError(err)
		}
		if !info.Msg.GetSharedTemplates() {
			hostName = HostTemplateName(tmpl) // no checksum yet
		}
	}
	resp, err := ag.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{
		CapsuleId: capsuleID, Template: hostName, Memory: memory, RunConfig: runConfig,
	}))
	if err != nil {
		return store.Template{}, res, AgentError(err)
	}
	m := resp.Msg
	tmpl.SizeBytes, tmpl.Checksum, tmpl.Memory = m.GetSizeBytes(), m.GetChecksum(), m.GetMemory()
	res.MemoryReason = m.GetMemoryReason()
	if HostTemplateName(tmpl) != hostName {
		// The host's shared store changed between the two calls.
		_ = s.discardSnapshot(ctx, h, hostName, tmpl.Checksum != "")
		return store.Template{}, res, errorf(KindUnavailable, "the host's template store changed during the snapshot; please try again")
	}
	recorded, err := s.cfg.Store.CreateTemplate(context.WithoutCancel(ctx), tmpl)
	if err != nil {
		if derr := s.discardSnapshot(ctx, h, hostName, tmpl.Checksum != ""); derr != nil {
			s.log.Warn("remove the snapshot of an unrecorded template", "host_template", hostName, "host_id", h.ID, "err", derr)
		}
		if errors.Is(err, store.ErrAlreadyExists) {
			return store.Template{}, res, &Error{Kind: KindConflict, Message: fmt.Sprintf("the team already has a template named %q", tmpl.Name), Err: err}
		}
		return store.Template{}, res, err
	}
	s.log.Info("capsule snapshotted to template", "capsule_id", capsuleID, "template_id", recorded.ID, "host_id", h.ID,
		"size_bytes", recorded.SizeBytes, "memory", recorded.Memory, "shared", recorded.Checksum != "")
	return recorded, res, nil
}

// discardSnapshot removes a template the store does not record from host h
// (and from the shared store).
func (s *Service) discardSnapshot(ctx context.Context, h store.Host, hostName string, shared bool) error {
	_, err := s.cfg.Agents.Client(h).DeleteTemplate(context.WithoutCancel(ctx), connect.NewRequest(&pb.DeleteTemplateRequest{Template: hostName, Shared: shared}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return err
	}
	return nil
}
