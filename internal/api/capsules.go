package api

// Capsule routes (/v1/capsules/…): each handler decodes, calls the capsule
// service (internal/capsules) and encodes; the life cycle itself lives in
// the service.

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// AccessTokenHeader carries a capsule's access token to the port proxy.
const AccessTokenHeader = "X-Wrenn-Access-Token"

func toCapsuleJSON(c store.Capsule) wrennapi.Capsule {
	return wrennapi.Capsule{
		ID: c.ID, Status: wrennapi.CapsuleStatus(c.Status), ErrorReason: c.ErrorReason, TemplateID: c.TemplateID, HostID: c.HostID, VCPUs: c.VCPUs,
		MemoryMB: c.MemoryMB, DiskSizeMB: c.DiskSizeMB, TimeoutSec: c.TimeoutSec, AllowInternet: c.AllowInternet,
		ExpiresAt: c.ExpiresAt, Public: c.Public, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, PausedAt: c.PausedAt,
		Metadata: c.Metadata, Network: toNetworkJSON(c.Network), Isolation: c.Isolation,
		OnTimeout: wrennapi.CapsuleOnTimeout(onTimeoutOf(c)), AutoResume: c.AutoResume,
		PauseReason: wrennapi.CapsulePauseReason(pauseReasonOf(c)),
	}
}

// onTimeoutOf is a capsule's on_timeout as the API shows it.
func onTimeoutOf(c store.Capsule) string {
	if c.OnTimeout == "" {
		return store.OnTimeoutKill
	}
	return c.OnTimeout
}

// pauseReasonOf is why a paused capsule is paused ("" when it is not).
func pauseReasonOf(c store.Capsule) string {
	if !c.Status.IsPaused() {
		return ""
	}
	return c.PauseReason
}

func toNetworkJSON(n *store.CapsuleNetwork) *wrennapi.CapsuleNetwork {
	if n.IsZero() {
		return nil
	}
	return &wrennapi.CapsuleNetwork{
		AllowOut: n.AllowOut, DenyOut: n.DenyOut, EgressMbps: n.EgressMBps, IngressMbps: n.IngressMBps, BurstMB: n.BurstMB,
	}
}

func fromNetworkJSON(n *wrennapi.CapsuleNetwork) *store.CapsuleNetwork {
	if n == nil {
		return nil
	}
	return &store.CapsuleNetwork{
		AllowOut: n.AllowOut, DenyOut: n.DenyOut, EgressMBps: n.EgressMbps, IngressMBps: n.IngressMbps, BurstMB: n.BurstMB,
	}
}

// scope is the caller of a team route, as the capsule service sees it.
func scope(r *http.Request) capsules.Scope {
	p := caller(r.Context())
	return capsules.TeamScope(p.TeamID, p.UserID, actor(p))
}

// adminScope is the caller of an admin route (any team's capsules).
func adminScope(r *http.Request) capsules.Scope {
	p := caller(r.Context())
	return capsules.AdminScope(p.UserID, actor(p))
}

func capsuleID(r *http.Request) string { return chi.URLParam(r, "capsuleID") }

func (a *API) createCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateCapsule
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	out, err := a.capsules.Create(r.Context(), scope(r), capsules.CreateRequest{
		Template: req.Template, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskSizeMB: req.DiskSizeMB,
		TimeoutSec: req.TimeoutSec, Env: req.Env, Public: req.Public, AllowInternet: req.AllowInternet,
		Metadata: req.Metadata, Network: fromNetworkJSON(req.Network), Isolation: req.Isolation,
		OnTimeout: req.OnTimeout, AutoResume: req.AutoResume, VolumeMounts: fromVolumeMountsJSON(req.VolumeMounts),
	})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, createdJSON(out))
}

// createdJSON is a created capsule's answer: with its access token and,
// for a capsule that sleeps, whether its host keeps memory.
func createdJSON(out capsules.Created) wrennapi.Capsule {
	j := toCapsuleJSON(out.Capsule)
	j.AccessToken = out.AccessToken
	j.MemoryKept = out.MemoryKept
	return j
}

func (a *API) forkCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Fork
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	n := int64(1)
	if req.Count != nil {
		n = *req.Count
	}
	if n < capsules.MinForkCount || n > capsules.MaxForkCount {
		a.writeError(w, r, errorf(CodeInvalidArgument, "count must be between %d and %d", capsules.MinForkCount, capsules.MaxForkCount))
		return
	}
	res, err := a.capsules.Fork(r.Context(), scope(r), capsuleID(r), int(n))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := wrennapi.ForkResult{BaseTemplateID: res.Base.ID, MemoryKept: res.MemoryKept, Capsules: make([]wrennapi.Capsule, 0, len(res.Copies))}
	for _, c := range res.Copies {
		out.Capsules = append(out.Capsules, createdJSON(c))
	}
	writeJSON(w, http.StatusCreated, out)
}

// listFilter reads status, cursor, limit and metadata.<key>=<value>
// (repeatable; every pair must match).
func listFilter(r *http.Request) (capsules.ListFilter, error) {
	q := r.URL.Query()
	f := capsules.ListFilter{Cursor: q.Get("cursor"), Status: q.Get("status")}
	for k, v := range q {
		if mk, ok := strings.CutPrefix(k, "metadata."); ok {
			if mk == "" || len(v) != 1 {
				return f, errorf(CodeInvalidArgument, "metadata filters are metadata.<key>=<value>, one value per key")
			}
			if f.Metadata == nil {
				f.Metadata = map[string]string{}
			}
			f.Metadata[mk] = v[0]
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return f, errorf(CodeInvalidArgument, "limit must be an integer from 1 to 1000")
		}
		f.Limit = n
	}
	return f, nil
}

func (a *API) listCapsules(w http.ResponseWriter, r *http.Request) {
	f, err := listFilter(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	caps, next, err := a.capsules.List(r.Context(), scope(r), f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Capsule, 0, len(caps))
	for _, c := range caps {
		out = append(out, toCapsuleJSON(c))
	}
	writeJSON(w, http.StatusOK, wrennapi.CapsuleList{Capsules: out, NextCursor: next})
}

// runningCapsule returns the path capsule, which must be running, and the
// client of its agent (the data-plane handlers' one lookup).
func (a *API) runningCapsule(r *http.Request) (store.Capsule, hostagentv1connect.HostAgentServiceClient, error) {
	conn, err := a.capsules.Connect(r.Context(), scope(r), capsuleID(r))
	return conn.Capsule, conn.Agent, err
}

func (a *API) getCapsule(w http.ResponseWriter, r *http.Request) {
	c, err := a.capsules.Get(r.Context(), scope(r), capsuleID(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

func (a *API) deleteCapsule(w http.ResponseWriter, r *http.Request) {
	if err := a.capsules.Destroy(r.Context(), scope(r), capsuleID(r), capsules.DestroyOptions{}); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// withMemoryKept is the answer to a pause or resume.
func withMemoryKept(res capsules.Result) wrennapi.Capsule {
	j := toCapsuleJSON(res.Capsule)
	j.MemoryKept = &res.MemoryKept
	return j
}

func (a *API) pauseCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Pause
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	res, err := a.capsules.Pause(r.Context(), scope(r), capsuleID(r), req.ToDisk)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, withMemoryKept(res))
}

func (a *API) snapshotCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CapsuleSnapshot
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	t, res, err := a.capsules.Snapshot(r.Context(), scope(r), capsuleID(r), capsules.SnapshotRequest{Name: req.Name, Memory: req.Memory})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	j := toTemplateJSON(t)
	writeJSON(w, http.StatusCreated, wrennapi.SnapshotTemplate{
		ID: j.ID, Name: j.Name, Public: j.Public, SizeBytes: j.SizeBytes, CreatedAt: j.CreatedAt, Memory: j.Memory, Shared: j.Shared,
		MemoryReason: res.MemoryReason,
	})
}

func (a *API) resumeCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Resume
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	res, err := a.capsules.Resume(r.Context(), scope(r), capsuleID(r), req.TimeoutSec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, withMemoryKept(res))
}

func (a *API) timeoutCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetTimeout
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, err := a.capsules.SetTimeout(r.Context(), scope(r), capsuleID(r), req.TimeoutSec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

func (a *API) publicCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetPublic
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, err := a.capsules.SetPublic(r.Context(), scope(r), capsuleID(r), req.Public)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

// networkCapsule replaces the capsule's egress policy, live.
func (a *API) networkCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetCapsuleNetwork
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	c, err := a.capsules.SetNetwork(r.Context(), scope(r), capsuleID(r), capsules.NetworkUpdate{
		AllowInternet: req.AllowInternet,
		Network: &store.CapsuleNetwork{
			AllowOut: req.AllowOut, DenyOut: req.DenyOut, EgressMBps: req.EgressMbps, IngressMBps: req.IngressMbps, BurstMB: req.BurstMB,
		},
	})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(c))
}

// execRequest is the capsule service's form of an exec body.
func execRequest(e wrennapi.Exec) capsules.ExecRequest {
	return capsules.ExecRequest{
		Cmd: e.Cmd, Args: e.Args, Env: e.Env, Cwd: e.Cwd, User: e.User, TimeoutSec: e.TimeoutSec, Stdin: []byte(e.Stdin),
	}
}

func (a *API) execCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Exec
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	m, err := a.capsules.Exec(r.Context(), scope(r), capsuleID(r), execRequest(req))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wrennapi.ExecResult{
		ExitCode: int(m.GetExitCode()), Stdout: string(m.GetStdout()), Stderr: string(m.GetStderr()),
		Error: m.GetError(), Truncated: m.GetTruncated(), PID: m.GetPid(),
	})
}
