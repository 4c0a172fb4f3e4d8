package api

import (
	"context"
	"errors"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Capsule defaults (the brief's).
const (
	DefaultVCPUs      = 1
	DefaultMemoryMB   = 512
	DefaultDiskMB     = 5120
	DefaultTimeoutSec = 300
	DefaultTemplate   = "base"

	maxVCPUs      = 64
	minMemoryMB   = 128
	maxMemoryMB   = 256 * 1024
	minDiskMB     = 512
	maxDiskMB     = 1024 * 1024
	maxTimeoutSec = 30 * 24 * 3600
	maxEnvVars    = 200
	maxEnvValue   = 32 * 1024
)

// AccessTokenHeader carries a capsule's access token to the port proxy.
const AccessTokenHeader = "X-Wrenn-Access-Token"

type capsuleJSON struct {
	ID          string     `json:"id"`
	Status      string     `json:"status"`
	TemplateID  string     `json:"template_id"`
	HostID      string     `json:"host_id,omitempty"`
	VCPUs       int64      `json:"vcpus"`
	MemoryMB    int64      `json:"memory_mb"`
	DiskSizeMB  int64      `json:"disk_size_mb"`
	TimeoutSec  int64      `json:"timeout_sec"`
	ExpiresAt   *time.Time `json:"expires_at"`
	Public      bool       `json:"public"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	PausedAt    *time.Time `json:"paused_at,omitempty"`
	AccessToken string     `json:"access_token,omitempty"`
	// MemoryKept is set in pause and resume answers only: whether the
	// capsule's processes and memory were (or are going to be) kept. A
	// pause to disk without a working CRIU keeps files only; the capsule
	// then boots again on resume.
	MemoryKept *bool `json:"memory_kept,omitempty"`
}

func toCapsuleJSON(c store.Capsule) capsuleJSON {
	return capsuleJSON{
		ID: c.ID, Status: string(c.Status), TemplateID: c.TemplateID, HostID: c.HostID, VCPUs: c.VCPUs,
		MemoryMB: c.MemoryMB, DiskSizeMB: c.DiskSizeMB, TimeoutSec: c.TimeoutSec, ExpiresAt: c.ExpiresAt,
		Public: c.Public, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, PausedAt: c.PausedAt,
	}
}

var (
	templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	envKeyRE       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

func validEnv(env map[string]string) error {
	if len(env) > maxEnvVars {
		return errorf(CodeInvalidArgument, "env has more than %d variables", maxEnvVars)
	}
	for k, v := range env {
		if !envKeyRE.MatchString(k) {
			return errorf(CodeInvalidArgument, "env key %q is not a valid variable name", clip(k))
		}
		if len(v) > maxEnvValue || strings.ContainsRune(v, 0) {
			return errorf(CodeInvalidArgument, "env %s: value too long or contains NUL", k)
		}
	}
	return nil
}

func intField(name string, p *int64, def, lo, hi int64) (int64, error) {
	if p == nil {
		return def, nil
	}
	if *p < lo || *p > hi {
		return 0, errorf(CodeInvalidArgument, "%s must be between %d and %d", name, lo, hi)
	}
	return *p, nil
}

type createCapsuleReq struct {
	Template   *string           `json:"template"`
	VCPUs      *int64            `json:"vcpus"`
	MemoryMB   *int64            `json:"memory_mb"`
	DiskSizeMB *int64            `json:"disk_size_mb"`
	TimeoutSec *int64            `json:"timeout_sec"`
	Env        map[string]string `json:"env"`
	Public     bool              `json:"public"`
}

func (a *API) createCapsule(w http.ResponseWriter, r *http.Request) {
	var req createCapsuleReq
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	var (
		c   = store.Capsule{ID: store.NewID(store.PrefixCapsule), Status: store.CapsulePending, Env: req.Env, Public: req.Public}
		err error
	)
	if c.VCPUs, err = intField("vcpus", req.VCPUs, DefaultVCPUs, 1, maxVCPUs); err == nil {
		if c.MemoryMB, err = intField("memory_mb", req.MemoryMB, DefaultMemoryMB, minMemoryMB, maxMemoryMB); err == nil {
			if c.DiskSizeMB, err = intField("disk_size_mb", req.DiskSizeMB, DefaultDiskMB, minDiskMB, maxDiskMB); err == nil {
				if c.TimeoutSec, err = intField("timeout_sec", req.TimeoutSec, DefaultTimeoutSec, 1, maxTimeoutSec); err == nil {
					err = validEnv(req.Env)
				}
			}
		}
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	tmplName := DefaultTemplate
	if req.Template != nil {
		tmplName = *req.Template
	}
	ctx := r.Context()
	p := caller(ctx)
	var tmpl store.Template
	switch {
	case strings.HasPrefix(tmplName, store.PrefixTemplate+"-") && validID(store.PrefixTemplate, tmplName) == nil:
		tmpl, err = a.cfg.Store.GetTemplate(ctx, p.TeamID, tmplName)
	case templateNameRE.MatchString(tmplName):
		tmpl, err = a.cfg.Store.GetTemplateByName(ctx, p.TeamID, tmplName)
	default:
		a.writeError(w, r, errorf(CodeInvalidArgument, "template must be a template name (lower-case letters, digits, . _ -) or id"))
		return
	}
	if errors.Is(err, store.ErrNotFound) {
		a.writeError(w, r, errorf(CodeNotFound, "template %q not found", tmplName))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	team, err := a.cfg.Store.GetTeam(ctx, p.TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	host, err := a.cfg.Scheduler.Pick(ctx, team, scheduler.Request{CapsuleID: c.ID, HostID: tmpl.HostID, VCPUs: c.VCPUs, MemoryMB: c.MemoryMB, DiskMB: c.DiskSizeMB})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	token := auth.RandomToken("wrc_")
	c.TeamID, c.TemplateID, c.HostID, c.CreatedBy = p.TeamID, tmpl.ID, host.ID, p.UserID
	c.AccessTokenHash = auth.HashToken(token)
	exp := store.Now().Add(time.Duration(c.TimeoutSec) * time.Second)
	c.ExpiresAt = &exp
	if c, err = a.cfg.Store.CreateCapsule(ctx, c); err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := a.cfg.Store.UpdateCapsuleStatus(ctx, c.TeamID, c.ID, store.CapsulePending, store.CapsuleStarting); err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := a.cfg.Agents.Client(host).CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
		CapsuleId: c.ID, Template: builds.HostTemplateName(tmpl), Vcpus: int32(c.VCPUs), MemoryMb: int32(c.MemoryMB), //nolint:gosec // bounded above
		DiskSizeMb: int32(c.DiskSizeMB), TimeoutSec: int32(c.TimeoutSec), Env: c.Env, //nolint:gosec // bounded above
		Labels: map[string]string{"team_id": c.TeamID},
	}))
	bg := context.WithoutCancel(ctx)
	if err != nil {
		a.log.WarnContext(ctx, "capsule create failed on host", "capsule_id", c.ID, "host_id", host.ID, "request_id", requestID(ctx), "err", err)
		_, _ = a.cfg.Store.UpdateCapsuleStatus(bg, c.TeamID, c.ID, store.CapsuleStarting, store.CapsuleError)
		a.cfg.Scheduler.Release(host.ID, c.ID)
		a.audit(r, c.TeamID, "capsule", c.ID, "create", err, map[string]any{"template": tmpl.Name, "host_id": host.ID})
		a.writeError(w, r, agentError(err))
		return
	}
	if _, err := a.cfg.Store.UpdateCapsuleStatus(bg, c.TeamID, c.ID, store.CapsuleStarting, store.CapsuleRunning); err != nil {
		a.writeError(w, r, err)
		return
	}
	if e := resp.Msg.GetCapsule().GetExpiresAt(); e > 0 {
		t := store.Truncate(time.Unix(e, 0))
		_ = a.cfg.Store.SetCapsuleTimeout(bg, c.TeamID, c.ID, c.TimeoutSec, &t)
	}
	c, err = a.cfg.Store.GetCapsule(bg, c.TeamID, c.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, c.TeamID, "capsule", c.ID, "create", nil, map[string]any{
		"template": tmpl.Name, "vcpus": c.VCPUs, "memory_mb": c.MemoryMB, "disk_size_mb": c.DiskSizeMB, "host_id": host.ID,
	})
	out := toCapsuleJSON(c)
	out.AccessToken = token
	writeJSON(w, http.StatusCreated, out)
}

func (a *API) listCapsules(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.CapsuleFilter{Cursor: q.Get("cursor"), Status: store.CapsuleStatus(q.Get("status"))}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			a.writeError(w, r, errorf(CodeInvalidArgument, "limit must be an integer from 1 to 1000"))
			return
		}
		f.Limit = n
	}
	switch f.Status {
	case "", store.CapsulePending, store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused,
		store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing:
	default:
		a.writeError(w, r, errorf(CodeInvalidArgument, "unknown status %q", clip(string(f.Status))))
		return
	}
	caps, next, err := a.cfg.Store.ListCapsules(r.Context(), caller(r.Context()).TeamID, f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]capsuleJSON, 0, len(caps))
	for _, c := range caps {
		out = append(out, toCapsuleJSON(c))
	}
	writeJSON(w, http.StatusOK, map[string]any{"capsules": out, "next_cursor": next})
}

// loadCapsule reads the path capsule of the caller's team.
func (a *API) loadCapsule(r *http.Request) (store.Capsule, error) {
	id := chi.URLParam(r, "capsuleID")
	if err := validID(store.PrefixCapsule, id); err != nil {
		return store.Capsule{}, err
	}
	c, err := a.cfg.Store.GetCapsule(r.Context(), caller(r.Context()).TeamID, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Capsule{}, errorf(CodeNotFound, "capsule %q not found", id)
	}
	return c, err
}

// agentFor returns the RPC client of the capsule's host; an unavailable
// host is a friendly 503.
func (a *API) agentFor(ctx context.Context, c store.Capsule) (hostagentv1connect.HostAgentServiceClient, store.Host, error) {
	if c.HostID == "" {
		return nil, store.Host{}, errorf(CodeConflict, "capsule %s is not placed on a host", c.ID)
	}
	h, err := a.cfg.Store.GetHost(ctx, c.HostID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, store.Host{}, &Error{Code: CodeUnavailable, Message: msgAgentUnavailable, Err: err}
	}
	if err != nil {
		return nil, store.Host{}, err
	}
	if h.Status == store.HostUnavailable {
		return nil, h, &Error{Code: CodeUnavailable, Message: msgAgentUnavailable}
	}
	return a.cfg.Agents.Client(h), h, nil
}

// runningCapsule loads the capsule and its agent, requiring it running.
func (a *API) runningCapsule(r *http.Request) (store.Capsule, hostagentv1connect.HostAgentServiceClient, error) {
	c, err := a.loadCapsule(r)
	if err != nil {
		return c, nil, err
	}
	if c.Status != store.CapsuleRunning {
		if c.Status.IsPaused() {
			return c, nil, errorf(CodeConflict, "capsule %s is %s; resume it first", c.ID, c.Status)
		}
		return c, nil, errorf(CodeConflict, "capsule %s is %s, not running", c.ID, c.Status)
	}
	cl, _, err := a.agentFor(r.Context(), c)
	return c, cl, err
}

func (a *API) getCapsule(w http.ResponseWriter, r *http.Request) {
	c, err := a.loadCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

func (a *API) deleteCapsule(w http.ResponseWriter, r *http.Request) {
	c, err := a.loadCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx := r.Context()
	if c.HostID != "" && c.Status != store.CapsuleStopped {
		cl, h, err := a.agentFor(ctx, c)
		switch {
		case err == nil:
			_, err = cl.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: c.ID}))
			if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
				a.writeError(w, r, agentError(err))
				return
			}
		case h.ID != "" && (c.Status == store.CapsuleError || c.Status == store.CapsuleMissing):
			// The host is gone and so is the capsule: forget it.
		default:
			a.writeError(w, r, err)
			return
		}
	}
	if err := a.cfg.Store.DeleteCapsule(context.WithoutCancel(ctx), c.TeamID, c.ID); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.cfg.Scheduler.Release(c.HostID, c.ID)
	a.audit(r, c.TeamID, "capsule", c.ID, "delete", nil, nil)
	if a.cfg.OnCapsuleGone != nil {
		a.cfg.OnCapsuleGone(c.ID)
	}
	w.WriteHeader(http.StatusNoContent)
}

// markGoneIfMissing asks the agent whether the capsule still exists after
// a failed operation; a capsule that is gone (or broken) becomes error.
func (a *API) markGoneIfMissing(ctx context.Context, cl hostagentv1connect.HostAgentServiceClient, c store.Capsule) {
	ctx = context.WithoutCancel(ctx)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cl.PingCapsule(pctx, connect.NewRequest(&pb.PingCapsuleRequest{CapsuleId: c.ID}))
	gone := connect.CodeOf(err) == connect.CodeNotFound ||
		(err == nil && (resp.Msg.GetState() == pb.CapsuleState_CAPSULE_STATE_ERROR || resp.Msg.GetState() == pb.CapsuleState_CAPSULE_STATE_STOPPED))
	if !gone {
		return
	}
	if ok, err := a.cfg.Store.UpdateCapsuleStatus(ctx, c.TeamID, c.ID, c.Status, store.CapsuleError); err != nil || !ok {
		a.log.Warn("could not mark vanished capsule as error", "capsule_id", c.ID, "applied", ok, "err", err)
		return
	}
	a.log.Warn("capsule vanished from its host; marked error", "capsule_id", c.ID, "host_id", c.HostID)
}

func (a *API) pauseCapsule(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ToDisk bool `json:"to_disk"`
	}
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx := r.Context()
	resp, err := cl.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: c.ID, ToDisk: req.ToDisk}))
	a.audit(r, c.TeamID, "capsule", c.ID, "pause", err, map[string]any{"to_disk": req.ToDisk})
	if err != nil {
		a.markGoneIfMissing(ctx, cl, c)
		a.writeError(w, r, agentError(err))
		return
	}
	to, kept := store.CapsulePaused, true // frozen in memory
	if resp.Msg.GetCapsule().GetState() == pb.CapsuleState_CAPSULE_STATE_HIBERNATED || req.ToDisk {
		to, kept = store.CapsuleHibernated, resp.Msg.GetMemoryKept()
	}
	a.transition(w, r, c, store.CapsuleRunning, to, func(j *capsuleJSON) { j.MemoryKept = &kept })
}

// transition moves c from → to in the store and answers with the capsule;
// decorate, when given, adds answer-only fields.
func (a *API) transition(w http.ResponseWriter, r *http.Request, c store.Capsule, from, to store.CapsuleStatus, decorate ...func(*capsuleJSON)) {
	ctx := context.WithoutCancel(r.Context())
	ok, err := a.cfg.Store.UpdateCapsuleStatus(ctx, c.TeamID, c.ID, from, to)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if !ok {
		a.writeError(w, r, errorf(CodeConflict, "capsule %s changed state during the operation", c.ID))
		return
	}
	c, err = a.cfg.Store.GetCapsule(ctx, c.TeamID, c.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := toCapsuleJSON(c)
	for _, d := range decorate {
		d(&out)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) resumeCapsule(w http.ResponseWriter, r *http.Request) {
	var req struct {
		TimeoutSec *int64 `json:"timeout_sec"`
	}
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, err := a.loadCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	timeout, err := intField("timeout_sec", req.TimeoutSec, c.TimeoutSec, 1, maxTimeoutSec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if !c.Status.IsPaused() {
		a.writeError(w, r, errorf(CodeConflict, "capsule %s is %s, not paused", c.ID, c.Status))
		return
	}
	ctx := r.Context()
	cl, _, err := a.agentFor(ctx, c)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: c.ID, TimeoutSec: int32(timeout)})) //nolint:gosec // bounded
	a.audit(r, c.TeamID, "capsule", c.ID, "resume", err, nil)
	if err != nil {
		a.markGoneIfMissing(ctx, cl, c)
		a.writeError(w, r, agentError(err))
		return
	}
	if e := resp.Msg.GetCapsule().GetExpiresAt(); e > 0 {
		t := store.Truncate(time.Unix(e, 0))
		_ = a.cfg.Store.SetCapsuleTimeout(context.WithoutCancel(ctx), c.TeamID, c.ID, timeout, &t)
	}
	kept := true // thawed from the freezer
	if c.Status == store.CapsuleHibernated {
		kept = resp.Msg.GetCapsule().GetMemoryKept()
	}
	a.transition(w, r, c, c.Status, store.CapsuleRunning, func(j *capsuleJSON) { j.MemoryKept = &kept })
}

func (a *API) timeoutCapsule(w http.ResponseWriter, r *http.Request) {
	var req struct {
		TimeoutSec *int64 `json:"timeout_sec"`
	}
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.TimeoutSec == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "timeout_sec is required"))
		return
	}
	timeout, err := intField("timeout_sec", req.TimeoutSec, 0, 1, maxTimeoutSec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.SetCapsuleTimeout(r.Context(), connect.NewRequest(&pb.SetCapsuleTimeoutRequest{CapsuleId: c.ID, TimeoutSec: int32(timeout)})) //nolint:gosec // bounded
	if err != nil {
		a.markGoneIfMissing(r.Context(), cl, c)
		a.writeError(w, r, agentError(err))
		return
	}
	exp := store.Truncate(time.Unix(resp.Msg.GetExpiresAt(), 0))
	if resp.Msg.GetExpiresAt() <= 0 {
		exp = store.Now().Add(time.Duration(timeout) * time.Second)
	}
	if err := a.cfg.Store.SetCapsuleTimeout(r.Context(), c.TeamID, c.ID, timeout, &exp); err != nil {
		a.writeError(w, r, err)
		return
	}
	c.TimeoutSec, c.ExpiresAt = timeout, &exp
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

func (a *API) publicCapsule(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Public *bool `json:"public"`
	}
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Public == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "public is required"))
		return
	}
	c, err := a.loadCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.SetCapsulePublic(r.Context(), c.TeamID, c.ID, *req.Public); err != nil {
		a.writeError(w, r, err)
		return
	}
	c.Public = *req.Public
	a.audit(r, c.TeamID, "capsule", c.ID, "set_public", nil, map[string]any{"public": c.Public})
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

type execReq struct {
	Cmd        string            `json:"cmd"`
	Args       []string          `json:"args"`
	Env        map[string]string `json:"env"`
	Cwd        string            `json:"cwd"`
	User       string            `json:"user"`
	TimeoutSec int64             `json:"timeout_sec"`
	Stdin      string            `json:"stdin"`
}

func (e execReq) validate() error {
	switch {
	case e.Cmd == "" || len(e.Cmd) > 4096 || strings.ContainsRune(e.Cmd, 0):
		return errorf(CodeInvalidArgument, "cmd is required (at most 4096 bytes, no NUL)")
	case len(e.Args) > 4096:
		return errorf(CodeInvalidArgument, "too many args")
	case e.TimeoutSec < 0 || e.TimeoutSec > 24*3600:
		return errorf(CodeInvalidArgument, "timeout_sec must be between 0 and 86400")
	case len(e.Cwd) > 4096 || strings.ContainsRune(e.Cwd, 0):
		return errorf(CodeInvalidArgument, "cwd is too long or contains NUL")
	case len(e.User) > 64:
		return errorf(CodeInvalidArgument, "user is too long")
	}
	for _, s := range e.Args {
		if strings.ContainsRune(s, 0) {
			return errorf(CodeInvalidArgument, "args must not contain NUL")
		}
	}
	return validEnv(e.Env)
}

func (e execReq) pb(id string) *pb.ExecRequest {
	return &pb.ExecRequest{
		CapsuleId: id, Cmd: e.Cmd, Args: e.Args, Env: e.Env, Cwd: e.Cwd, User: e.User,
		TimeoutSec: int32(min(e.TimeoutSec, math.MaxInt32)), Stdin: []byte(e.Stdin), //nolint:gosec // bounded
	}
}

func (a *API) execCapsule(w http.ResponseWriter, r *http.Request) {
	var req execReq
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := req.validate(); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	d := a.cfg.ExecTimeout
	if req.TimeoutSec > 0 {
		d = time.Duration(req.TimeoutSec)*time.Second + 10*time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), d)
	defer cancel()
	resp, err := cl.Exec(ctx, connect.NewRequest(req.pb(c.ID)))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			a.markGoneIfMissing(r.Context(), cl, c)
		}
		a.writeError(w, r, agentError(err))
		return
	}
	m := resp.Msg
	writeJSON(w, http.StatusOK, map[string]any{
		"exit_code": m.GetExitCode(), "stdout": string(m.GetStdout()), "stderr": string(m.GetStderr()),
		"error": m.GetError(), "truncated": m.GetTruncated(), "pid": m.GetPid(),
	})
}

func (a *API) capsuleMetrics(w http.ResponseWriter, r *http.Request) {
	win := pb.MetricsWindow_METRICS_WINDOW_10M
	switch r.URL.Query().Get("window") {
	case "", "10m":
	case "2h":
		win = pb.MetricsWindow_METRICS_WINDOW_2H
	case "24h":
		win = pb.MetricsWindow_METRICS_WINDOW_24H
	default:
		a.writeError(w, r, errorf(CodeInvalidArgument, "window must be 10m, 2h or 24h"))
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.GetCapsuleMetrics(r.Context(), connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: c.ID, Window: win}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	type point struct {
		TS        int64   `json:"ts_ms"`
		CPUPct    float64 `json:"cpu_used_pct"`
		CPUCount  int32   `json:"cpu_count"`
		MemUsed   uint64  `json:"mem_used_bytes"`
		MemTotal  uint64  `json:"mem_total_bytes"`
		DiskUsed  uint64  `json:"disk_used_bytes"`
		DiskTotal uint64  `json:"disk_total_bytes"`
	}
	pts := make([]point, 0, len(resp.Msg.GetPoints()))
	for _, p := range resp.Msg.GetPoints() {
		pts = append(pts, point{p.GetTsMs(), p.GetCpuUsedPct(), p.GetCpuCount(), p.GetMemUsedBytes(), p.GetMemTotalBytes(), p.GetDiskUsedBytes(), p.GetDiskTotalBytes()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"resolution_sec": resp.Msg.GetResolutionSec(), "points": pts})
}
