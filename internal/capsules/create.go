package capsules

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/steptrace"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

var (
	templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}(:[a-z0-9][a-z0-9._-]{0,63})?$`)
	envKeyRE       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

// CreateRequest is a capsule create. Nil pointers take limits.Defaults.
type CreateRequest struct {
	// Template is a template name or id visible to the team (default
	// "base"); ignored for an internal capsule.
	Template      *string
	VCPUs         *int64
	MemoryMB      *int64
	DiskSizeMB    *int64
	TimeoutSec    *int64
	Env           map[string]string
	Public        bool
	AllowInternet *bool // nil: the template's default, else the team's, else on (capped by Config.InternetOff)
	// Metadata is the caller's string key/values (returned, filterable).
	Metadata map[string]string
	// Network is the egress policy and rate limits (nil: the defaults).
	Network *store.CapsuleNetwork
	// Isolation is how to isolate the capsule (container, gvisor,
	// microvm); "": the template's default, else the team's, else the
	// platform's (ResolveIsolation).
	Isolation string
	// OnTimeout ("kill" or "pause") and AutoResume: nil takes the
	// template's default, else the team's, else kill / false.
	OnTimeout  *string
	AutoResume *bool
	// VolumeMounts are the team's volumes to mount (docs/VOLUMES.md).
	VolumeMounts []VolumeMountRequest
	// Internal, when set, makes a platform-internal capsule (a template
	// build's): no store row, so it is neither listed, nor metered, nor
	// audited; the agent's labels name its owner.
	Internal *Internal
}

// Internal describes a platform-internal capsule.
type Internal struct {
	// ID is the capsule's id on its host (a build uses its own id).
	ID     string
	TeamID string
	// From is the (resolved) template the capsule starts from.
	From           store.Template
	Labels         map[string]string
	DefaultWorkdir string
}

// Created is a created capsule.
type Created struct {
	Capsule store.Capsule
	// AccessToken opens the capsule's ports through the proxy; shown once.
	AccessToken string
	// Host is where the capsule runs.
	Host store.Host
	// MemoryKept, for a capsule that pauses at its timeout or resumes on
	// use, says whether its host keeps process memory across a pause to
	// disk (false: the capsule boots again with its files); nil otherwise.
	MemoryKept *bool
	// Restored: the capsule was restored with its (memory) template's
	// processes running, not booted.
	Restored bool
}

// intField checks an optional value against [lo, hi], or returns def.
func intField(name string, p *int64, def, lo, hi int64) (int64, error) {
	if p == nil {
		return def, nil
	}
	if *p < lo || *p > hi {
		return 0, errorf(KindInvalid, "%s must be between %d and %d", name, lo, hi)
	}
	return *p, nil
}

// ValidEnv checks environment variables (names and value sizes).
func ValidEnv(env map[string]string) error {
	d := limits.Defaults
	if len(env) > d.MaxEnvVars {
		return errorf(KindInvalid, "env has more than %d variables", d.MaxEnvVars)
	}
	for k, v := range env {
		if !envKeyRE.MatchString(k) {
			return errorf(KindInvalid, "env key %q is not a valid variable name", clip(k))
		}
		if len(v) > d.MaxEnvValue || strings.ContainsRune(v, 0) {
			return errorf(KindInvalid, "env %s: value too long or contains NUL", k)
		}
	}
	return nil
}

// validate fills c's resources from req (defaults and bounds).
func (req CreateRequest) validate(c *store.Capsule) error {
	d := limits.Defaults
	var err error
	if c.VCPUs, err = intField("vcpus", req.VCPUs, d.VCPUs, d.MinVCPUs, d.MaxVCPUs); err != nil {
		return err
	}
	if c.MemoryMB, err = intField("memory_mb", req.MemoryMB, d.MemoryMB, d.MinMemoryMB, d.MaxMemoryMB); err != nil {
		return err
	}
	if c.DiskSizeMB, err = intField("disk_size_mb", req.DiskSizeMB, d.DiskSizeMB, d.MinDiskSizeMB, d.MaxDiskSizeMB); err != nil {
		return err
	}
	if c.TimeoutSec, err = intField("timeout_sec", req.TimeoutSec, d.TimeoutSec, d.MinTimeoutSec, d.MaxTimeoutSec); err != nil {
		return err
	}
	c.AllowInternet = d.AllowInternet
	if req.AllowInternet != nil {
		c.AllowInternet = *req.AllowInternet
	}
	if err := ValidMetadata(req.Metadata); err != nil {
		return err
	}
	c.Metadata = req.Metadata
	return ValidEnv(req.Env)
}

// Metadata bounds.
const (
	MaxMetadataKeys     = 64
	MaxMetadataKeyLen   = 256
	MaxMetadataValueLen = 4096
)

// ValidMetadata checks capsule metadata (count and sizes).
func ValidMetadata(md map[string]string) error {
	if len(md) > MaxMetadataKeys {
		return errorf(KindInvalid, "metadata has more than %d keys", MaxMetadataKeys)
	}
	for k, v := range md {
		if k == "" || len(k) > MaxMetadataKeyLen {
			return errorf(KindInvalid, "metadata keys must be 1 to %d bytes", MaxMetadataKeyLen)
		}
		if len(v) > MaxMetadataValueLen {
			return errorf(KindInvalid, "metadata value of %q is longer than %d bytes", clip(k), MaxMetadataValueLen)
		}
	}
	return nil
}

// resolveTemplate finds the template a team's create names.
func (s *Service) resolveTemplate(ctx context.Context, teamID string, ref *string) (store.Template, error) {
	name := limits.Defaults.Template
	if ref != nil {
		name = *ref
	}
	var (
		t   store.Template
		err error
	)
	switch {
	case idShape(store.PrefixTemplate, name):
		t, err = s.cfg.Store.GetTemplate(ctx, teamID, name)
	case templateNameRE.MatchString(name):
		t, err = s.cfg.Store.GetTemplateByName(ctx, teamID, NormalizeTemplateName(name))
	default:
		return t, errorf(KindInvalid, "template must be a template name (lower-case letters, digits, . _ -, with an optional :tag) or id")
	}
	if errors.Is(err, store.ErrNotFound) {
		return t, &Error{Kind: KindNotFound, Message: fmt.Sprintf("template %q not found", name), Err: err}
	}
	return t, err
}

// pick places a capsule; no host or no capacity is a friendly unavailable.
func (s *Service) pick(ctx context.Context, teamID string, req scheduler.Request) (store.Host, error) {
	team, err := s.cfg.Store.GetTeam(ctx, teamID)
	if err != nil {
		return store.Host{}, err
	}
	return s.pickFor(ctx, team, req)
}

// pickFor is pick for a team already read.
func (s *Service) pickFor(ctx context.Context, team store.Team, req scheduler.Request) (store.Host, error) {
	h, err := s.cfg.Scheduler.Pick(ctx, team, req)
	if errors.Is(err, scheduler.ErrNoHosts) || errors.Is(err, scheduler.ErrNoCapacity) {
		return h, &Error{Kind: KindUnavailable, Message: MsgNoCapacity, Err: err}
	}
	if errors.Is(err, scheduler.ErrIsolationUnavailable) {
		return h, isolationError(err)
	}
	return h, err
}

// Create validates req, applies the defaults, resolves the template,
// places the capsule, records it (pending → starting), creates it on its
// host and records it running. A host that refuses leaves the capsule in
// error with the agent's message, and the placement is released.
func (s *Service) Create(ctx context.Context, sc Scope, req CreateRequest) (Created, error) {
	if req.Internal != nil {
		return s.createInternal(ctx, req)
	}
	if sc.anyTeam() || sc.TeamID == "" {
		return Created{}, errorf(KindInvalid, "a capsule is created in a team")
	}
	c := store.Capsule{ID: store.NewID(store.PrefixCapsule), Status: store.CapsulePending, Env: req.Env, Public: req.Public}
	tr := steptrace.New()
	defer tr.Log(s.log, "capsule create steps", "capsule_id", c.ID)
	if err := req.validate(&c); err != nil {
		return Created{}, err
	}
	team, err := s.cfg.Store.GetTeam(ctx, sc.TeamID)
	if err != nil {
		return Created{}, err
	}
	tmpl, err := s.resolveTemplate(ctx, sc.TeamID, req.Template)
	if err != nil {
		return Created{}, err
	}
	if c.AllowInternet, err = s.resolveInternet(team, tmpl, req.AllowInternet); err != nil {
		return Created{}, err
	}
	if c.Network, err = checkNetwork(c.AllowInternet, req.Network); err != nil {
		return Created{}, err
	}
	if c.Isolation, err = ResolveIsolation(req.Isolation, tmpl, team, s.cfg.DefaultIsolation); err != nil {
		return Created{}, err
	}
	if c.OnTimeout, c.AutoResume, err = resolveLifecycle(req, tmpl, team); err != nil {
		return Created{}, err
	}
	vols, err := s.resolveVolumeMounts(ctx, sc.TeamID, c.Isolation, req.VolumeMounts)
	if err != nil {
		return Created{}, err
	}
	tr.Mark("resolve")
	pin := PinnedHost(tmpl)
	if vols.hostID != "" {
		if pin != "" && pin != vols.hostID {
			return Created{}, errorf(KindConflict, "the template lives on one host and the volume is held on another; delete the capsules that hold the volume first")
		}
		pin = vols.hostID
	}
	host, err := s.pickFor(ctx, team, scheduler.Request{
		CapsuleID: c.ID, HostID: pin, VCPUs: c.VCPUs, MemoryMB: c.MemoryMB, DiskMB: c.DiskSizeMB, Isolation: c.Isolation,
	})
	if err != nil {
		return Created{}, err
	}
	tr.Mark("pick")
	bg := context.WithoutCancel(ctx)
	placed := true
	defer func() {
		if placed {
			s.cfg.Scheduler.Release(host.ID, c.ID)
		}
	}()
	token := auth.RandomToken("wrc_")
	c.TeamID, c.TemplateID, c.HostID, c.CreatedBy = sc.TeamID, tmpl.ID, host.ID, sc.UserID
	c.AccessTokenHash = auth.HashToken(token)
	exp := store.Now().Add(time.Duration(c.TimeoutSec) * time.Second).Truncate(time.Second)
	c.ExpiresAt = &exp
	// Inserted as starting (pending → starting has no event: one store
	// write less per create).
	c.Status = store.CapsuleStarting
	if c, err = s.cfg.Store.CreateCapsule(ctx, c); err != nil {
		return Created{}, err
	}
	if err := s.addVolumeMounts(ctx, c, vols); err != nil {
		return Created{}, err
	}
	tr.Mark("insert")
	// The created event is recorded while the host creates the capsule
	// (it does not depend on the answer), and before any later event.
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		s.cfg.Events.Emit(ctx, c.TeamID, events.CapsuleCreated, c.ID, map[string]any{
			"template": tmpl.Name, "template_id": tmpl.ID, "host_id": host.ID, "vcpus": c.VCPUs, "memory_mb": c.MemoryMB,
		})
	}()
	resp, err := s.cfg.Agents.Client(host).CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
		CapsuleId: c.ID, Template: HostTemplateName(tmpl), Vcpus: int32(c.VCPUs), MemoryMb: int32(c.MemoryMB), //nolint:gosec // bounded by limits
		DiskSizeMb: int32(c.DiskSizeMB), TimeoutSec: agentTimeout(c, c.TimeoutSec), Env: c.Env, //nolint:gosec // bounded by limits
		Labels: map[string]string{"team_id": c.TeamID}, AllowInternet: c.AllowInternet, Network: networkProto(c.Network, c.AllowInternet, team),
		TemplateChecksum: tmpl.Checksum, Isolation: c.Isolation, VolumeMounts: vols.proto,
	}))
	<-evDone
	tr.Mark("agent+event")
	if err != nil {
		s.log.WarnContext(ctx, "capsule create failed on host", "capsule_id", c.ID, "host_id", host.ID, "err", err)
		if len(vols.mounts) > 0 {
			// The capsule never ran: its mounts hold nothing.
			if rerr := s.cfg.Store.RemoveVolumeMounts(bg, c.ID); rerr != nil {
				s.log.Warn("forget volume mounts of a failed create", "capsule_id", c.ID, "err", rerr)
			}
		}
		// The reason users see: the agent's own message when it answered,
		// a friendly one (no addresses) when it could not be reached.
		aerr := AgentError(err)
		reason := "the host could not create the capsule"
		var se *Error
		if errors.As(aerr, &se) && se.Message != "" {
			reason = se.Message
		}
		if _, ferr := s.transition(bg, c, store.CapsuleError, reason); ferr != nil {
			s.log.Warn("mark failed capsule error", "capsule_id", c.ID, "err", ferr)
		}
		s.audit(ctx, sc, c, "create", err, map[string]any{"template": tmpl.Name, "host_id": host.ID})
		return Created{}, aerr
	}
	placed = false // the capsule holds its placement until it is destroyed
	if _, err := s.transition(bg, c, store.CapsuleRunning, ""); err != nil {
		return Created{}, err
	}
	tr.Mark("running")
	// The host's expiry is the one it enforces; it is written only when
	// it differs (to the second) from the one inserted.
	if e := resp.Msg.GetCapsule().GetExpiresAt(); e > 0 && (c.ExpiresAt == nil || c.ExpiresAt.Unix() != e) {
		t := store.Truncate(time.Unix(e, 0))
		_ = s.cfg.Store.SetCapsuleTimeout(bg, c.TeamID, c.ID, c.TimeoutSec, &t)
	}
	if c, err = s.cfg.Store.GetCapsule(bg, c.TeamID, c.ID); err != nil {
		return Created{}, err
	}
	tr.Mark("reread")
	s.audit(ctx, sc, c, "create", nil, map[string]any{
		"template": tmpl.Name, "vcpus": c.VCPUs, "memory_mb": c.MemoryMB, "disk_size_mb": c.DiskSizeMB,
		"host_id": host.ID, "allow_internet": c.AllowInternet, "isolation": c.Isolation, "on_timeout": c.OnTimeout, "auto_resume": c.AutoResume,
	})
	tr.Mark("audit")
	out := Created{Capsule: c, AccessToken: token, Host: host, Restored: resp.Msg.GetCapsule().GetMemoryKept()}
	if c.OnTimeout == store.OnTimeoutPause || c.AutoResume {
		kept := s.hostKeepsMemory(ctx, host)
		out.MemoryKept = &kept
	}
	return out, nil
}

// createInternal starts a platform-internal capsule: placed and created
// on its host like any other, but with no row. On failure it is destroyed
// (a create cut short may have left it) and its placement released.
func (s *Service) createInternal(ctx context.Context, req CreateRequest) (Created, error) {
	in := req.Internal
	c := store.Capsule{ID: in.ID, TeamID: in.TeamID, Env: req.Env}
	if err := req.validate(&c); err != nil {
		return Created{}, err
	}
	// Builds run as containers (their file systems become templates).
	host, err := s.pick(ctx, in.TeamID, scheduler.Request{
		CapsuleID: in.ID, HostID: PinnedHost(in.From), VCPUs: c.VCPUs, MemoryMB: c.MemoryMB, DiskMB: c.DiskSizeMB,
		Isolation: runtime.IsolationContainer,
	})
	if err != nil {
		return Created{}, err
	}
	_, err = s.cfg.Agents.Client(host).CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
		CapsuleId: in.ID, Template: HostTemplateName(in.From),
		Vcpus: int32(c.VCPUs), MemoryMb: int32(c.MemoryMB), DiskSizeMb: int32(c.DiskSizeMB), //nolint:gosec // bounded by limits
		TimeoutSec: int32(c.TimeoutSec), Env: c.Env, AllowInternet: c.AllowInternet, //nolint:gosec // bounded by limits
		Labels: in.Labels, DefaultWorkdir: in.DefaultWorkdir, TemplateChecksum: in.From.Checksum,
		Isolation: runtime.IsolationContainer,
	}))
	if err != nil {
		s.DestroyInternal(ctx, host, in.ID)
		return Created{}, AgentError(err)
	}
	return Created{Capsule: c, Host: host}, nil
}

// DestroyInternal destroys a platform-internal capsule on host h with a
// context that outlives ctx and releases its placement; a capsule already
// gone is fine.
func (s *Service) DestroyInternal(ctx context.Context, h store.Host, id string) {
	if err := s.DestroyOrphan(ctx, h, id); err != nil {
		s.log.Warn("destroy internal capsule", "capsule_id", id, "host_id", h.ID, "err", err)
		return
	}
	s.cfg.Scheduler.Release(h.ID, id)
}

// OnHost asks host h whether it has capsule id (the reconciler, for a
// create that may have been lost): false only when the agent answers that
// it does not know it; a failed call is an error.
func (s *Service) OnHost(ctx context.Context, h store.Host, id string) (bool, error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.cfg.Agents.Client(h).PingCapsule(pctx, connect.NewRequest(&pb.PingCapsuleRequest{CapsuleId: id}))
	switch {
	case err == nil:
		return true, nil
	case connect.CodeOf(err) == connect.CodeNotFound:
		return false, nil
	}
	return false, err
}

// DestroyOrphan destroys, on host h, a capsule the store does not know
// (an agent-only leftover), with a context that outlives ctx (one minute).
func (s *Service) DestroyOrphan(ctx context.Context, h store.Host, id string) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	_, err := s.cfg.Agents.Client(h).DestroyCapsule(dctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return err
	}
	return nil
}
