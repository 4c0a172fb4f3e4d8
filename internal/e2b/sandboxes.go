package e2b

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

const clientID = "wrenn"

func contextWithScope(ctx context.Context, sc capsules.Scope) context.Context {
	return context.WithValue(ctx, scopeKey{}, sc)
}

func scope(r *http.Request) capsules.Scope {
	sc, _ := r.Context().Value(scopeKey{}).(capsules.Scope)
	return sc
}

// state maps a Wrenn status to E2B's sandbox state ("" for states E2B has
// no word for: they are not listed).
func state(s store.CapsuleStatus) string {
	switch {
	case s == store.CapsuleRunning:
		return "running"
	case s.IsPaused():
		return "paused"
	}
	return ""
}

func endAt(c store.Capsule) time.Time {
	if c.ExpiresAt != nil {
		return *c.ExpiresAt
	}
	return c.CreatedAt.Add(time.Duration(c.TimeoutSec) * time.Second)
}

func (h *Handler) toSandbox(c store.Capsule) sandbox {
	return sandbox{
		TemplateID: c.TemplateID, SandboxID: c.ID, ClientID: clientID,
		EnvdVersion: EnvdVersion, EnvdAccessToken: h.envdToken(c.ID),
	}
}

func (h *Handler) toDetail(c store.Capsule) sandboxDetail {
	ai := c.AllowInternet
	st := state(c.Status)
	if st == "" {
		st = string(c.Status)
	}
	return sandboxDetail{
		TemplateID: c.TemplateID, SandboxID: c.ID, ClientID: clientID, StartedAt: c.CreatedAt, EndAt: endAt(c),
		EnvdVersion: EnvdVersion, EnvdAccessToken: h.envdToken(c.ID), CPUCount: c.VCPUs, MemoryMB: c.MemoryMB,
		DiskSizeMB: c.DiskSizeMB, Metadata: c.Metadata, State: st, AllowInternetAccess: &ai, VolumeMounts: []any{},
	}
}

func toListed(c store.Capsule) listedSandbox {
	return listedSandbox{
		TemplateID: c.TemplateID, SandboxID: c.ID, ClientID: clientID, StartedAt: c.CreatedAt, EndAt: endAt(c),
		CPUCount: c.VCPUs, MemoryMB: c.MemoryMB, DiskSizeMB: c.DiskSizeMB, Metadata: c.Metadata,
		State: state(c.Status), EnvdVersion: EnvdVersion, VolumeMounts: []any{},
	}
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	var req newSandbox
	if err := h.decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	switch {
	case req.TemplateID == "":
		writeError(w, http.StatusBadRequest, "templateID is required")
		return
	case req.AutoResume != nil && req.AutoResume.Enabled && (req.AutoPause == nil || !*req.AutoPause):
		// E2B's rule: lifecycle.autoResume needs onTimeout 'pause'.
		writeError(w, http.StatusBadRequest, "autoResume needs autoPause (lifecycle.onTimeout 'pause')")
		return
	case len(req.MCP) > 0:
		writeError(w, http.StatusNotImplemented, "MCP gateways are not supported yet by Wrenn's E2B-compatible API")
		return
	}
	timeout := req.Timeout
	if timeout == nil {
		d := int64(15) // E2B's default
		timeout = &d
	}
	nw, public, msg, status := e2bNetwork(req.Network)
	if status != 0 {
		writeError(w, status, msg)
		return
	}
	tmpl := req.TemplateID
	// lifecycle.onTimeout 'pause' (autoPause) and autoResume: Wrenn's
	// on_timeout pause (to disk, memory kept where the host can) and
	// auto_resume; unset, E2B's defaults (kill, no auto-resume).
	onTimeout, autoResume := "kill", false
	if req.AutoPause != nil && *req.AutoPause {
		onTimeout = "pause"
	}
	if req.AutoResume != nil {
		autoResume = req.AutoResume.Enabled
	}
	out, err := h.cfg.Capsules.Create(r.Context(), scope(r), capsules.CreateRequest{
		Template: &tmpl, TimeoutSec: timeout, Env: req.EnvVars, AllowInternet: req.AllowInternetAccess,
		Metadata: req.Metadata, Network: nw, Public: public, OnTimeout: &onTimeout, AutoResume: &autoResume,
		VolumeMounts: toVolumeMounts(req.VolumeMounts),
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, h.toSandbox(out.Capsule))
}

// listFilter reads E2B's list query: metadata (a URL-encoded k=v&k2=v2
// string), state (running, paused; comma-separated or repeated), limit
// and nextToken.
func listFilter(q url.Values) (capsules.ListFilter, map[string]bool, error) {
	f := capsules.ListFilter{Cursor: q.Get("nextToken")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return f, nil, &httpError{http.StatusBadRequest, "limit must be an integer from 1 to 1000"}
		}
		f.Limit = n
	}
	if m := q.Get("metadata"); m != "" {
		kv, err := url.ParseQuery(m)
		if err != nil {
			return f, nil, &httpError{http.StatusBadRequest, "metadata must be URL-encoded key=value pairs"}
		}
		f.Metadata = map[string]string{}
		for k, v := range kv {
			f.Metadata[k] = v[len(v)-1]
		}
	}
	states := map[string]bool{}
	for _, v := range q["state"] {
		for _, s := range strings.Split(v, ",") {
			switch s = strings.TrimSpace(s); s {
			case "running", "paused":
				states[s] = true
			case "":
			default:
				return f, nil, &httpError{http.StatusBadRequest, "state must be running or paused"}
			}
		}
	}
	if len(states) == 0 {
		states = map[string]bool{"running": true, "paused": true}
	}
	return f, states, nil
}

func (h *Handler) listPage(w http.ResponseWriter, r *http.Request, onlyRunning bool) ([]listedSandbox, bool) {
	f, states, err := listFilter(r.URL.Query())
	if err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	if onlyRunning {
		states = map[string]bool{"running": true}
	}
	caps, next, err := h.cfg.Capsules.List(r.Context(), scope(r), f)
	if err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	out := []listedSandbox{}
	for _, c := range caps {
		if st := state(c.Status); st != "" && states[st] {
			out = append(out, toListed(c))
		}
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	return out, true
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	if out, ok := h.listPage(w, r, false); ok {
		writeJSON(w, http.StatusOK, out)
	}
}

// listV1 is the older GET /sandboxes: running sandboxes only.
func (h *Handler) listV1(w http.ResponseWriter, r *http.Request) {
	if out, ok := h.listPage(w, r, true); ok {
		writeJSON(w, http.StatusOK, out)
	}
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	c, err := h.cfg.Capsules.Get(r.Context(), scope(r), chi.URLParam(r, "id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.toDetail(c))
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request) {
	if err := h.cfg.Capsules.Destroy(r.Context(), scope(r), chi.URLParam(r, "id"), capsules.DestroyOptions{}); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request) {
	var body timeoutBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if body.Timeout == nil {
		writeError(w, http.StatusBadRequest, "timeout is required")
		return
	}
	if _, err := h.cfg.Capsules.SetTimeout(r.Context(), scope(r), chi.URLParam(r, "id"), body.Timeout); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refresh extends the sandbox's life by duration seconds from now
// (E2B's default 60 s).
func (h *Handler) refresh(w http.ResponseWriter, r *http.Request) {
	var body refreshBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	d := int64(60)
	if body.Duration != nil {
		d = *body.Duration
	}
	if _, err := h.cfg.Capsules.SetTimeout(r.Context(), scope(r), chi.URLParam(r, "id"), &d); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) pause(w http.ResponseWriter, r *http.Request) {
	var body timeoutBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	// memory false is a pause that keeps files only: Wrenn's hibernation.
	toDisk := body.Memory != nil && !*body.Memory
	if _, err := h.cfg.Capsules.Pause(r.Context(), scope(r), chi.URLParam(r, "id"), toDisk); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resume is the older POST /sandboxes/{id}/resume.
func (h *Handler) resume(w http.ResponseWriter, r *http.Request) {
	var body timeoutBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	if rebootAsked(w, body) {
		return
	}
	res, err := h.cfg.Capsules.Resume(r.Context(), scope(r), chi.URLParam(r, "id"), body.Timeout)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, h.toSandbox(res.Capsule))
}

// rebootAsked answers 501 for a resume with memory false (the SDK's
// onResume: 'reboot': a cold boot from the files, the memory snapshot
// ignored), which Wrenn cannot do yet. E2B's contract is an error, never a
// silent memory restore. It reports whether it answered.
func rebootAsked(w http.ResponseWriter, body timeoutBody) bool {
	if body.Memory == nil || *body.Memory {
		return false
	}
	writeError(w, http.StatusNotImplemented, "resuming from the files only (memory: false, onResume 'reboot') is not supported yet by Wrenn's E2B-compatible API; resume with memory")
	return true
}

// connect resumes a paused sandbox (201) or, for a running one, extends
// its timeout when the new one ends later (200).
func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	var body timeoutBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	id := chi.URLParam(r, "id")
	c, err := h.cfg.Capsules.Get(r.Context(), scope(r), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if c.Status.IsPaused() {
		if rebootAsked(w, body) {
			return
		}
		res, err := h.cfg.Capsules.Resume(r.Context(), scope(r), id, body.Timeout)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, h.toSandbox(res.Capsule))
		return
	}
	if c.Status != store.CapsuleRunning {
		writeError(w, http.StatusConflict, "sandbox "+c.ID+" is "+string(c.Status)+", not running or paused")
		return
	}
	if body.Timeout != nil && (c.ExpiresAt == nil || time.Now().Add(time.Duration(*body.Timeout)*time.Second).After(*c.ExpiresAt)) {
		if c, err = h.cfg.Capsules.SetTimeout(r.Context(), scope(r), id, body.Timeout); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, h.toSandbox(c))
}

// e2bNetwork maps E2B's create "network" object onto Wrenn's: allowOut and
// denyOut are the egress policy (the same rule forms; E2B's ALL_TRAFFIC is
// 0.0.0.0/0), allowPublicTraffic is the port proxy's public flag.
// maskRequestHost has no Wrenn equivalent yet (501); other keys are a 400.
func e2bNetwork(m map[string]any) (nw *store.CapsuleNetwork, public bool, msg string, status int) {
	if len(m) == 0 {
		return nil, false, "", 0
	}
	strs := func(key string) ([]string, bool) {
		v, ok := m[key]
		if !ok || v == nil {
			return nil, true
		}
		l, ok := v.([]any)
		if !ok {
			return nil, false
		}
		out := make([]string, 0, len(l))
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	nw = &store.CapsuleNetwork{}
	for k, v := range m {
		var ok bool
		switch k {
		case "allowOut":
			nw.AllowOut, ok = strs(k)
		case "denyOut":
			nw.DenyOut, ok = strs(k)
		case "allowPublicTraffic":
			public, ok = v.(bool)
		case "maskRequestHost":
			return nil, false, "network.maskRequestHost is not supported yet by Wrenn's E2B-compatible API", http.StatusNotImplemented
		default:
			return nil, false, fmt.Sprintf("network.%s is not a network setting", k), http.StatusBadRequest
		}
		if !ok {
			return nil, false, fmt.Sprintf("network.%s has the wrong type", k), http.StatusBadRequest
		}
	}
	return nw, public, "", 0
}

// forkBody is E2B's SandboxForkRequest.
type forkBody struct {
	// Timeout is each copy's time to live in seconds (E2B's default 15).
	Timeout *int64 `json:"timeout"`
	// Count of copies (1–100 in E2B; Wrenn makes at most
	// capsules.MaxForkCount per request).
	Count *int `json:"count"`
}

// forkResult is one entry of E2B's fork answer: the copy, or the error
// that kept it from starting.
type forkResult struct {
	Sandbox *sandbox  `json:"sandbox,omitempty"`
	Error   *apiError `json:"error,omitempty"`
}

// fork is E2B's POST /sandboxes/{id}/fork: the sandbox is checkpointed
// once (it keeps running, its id and expiry untouched) and count copies
// start from that checkpoint (capsules.Service.Fork). Wrenn's fork is all
// or nothing: a copy that cannot start fails the request and no copy is
// left, so every entry of a 201 carries a sandbox.
func (h *Handler) fork(w http.ResponseWriter, r *http.Request) {
	var body forkBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	count := 1
	if body.Count != nil {
		count = *body.Count
	}
	switch {
	case count < 1 || count > 100:
		writeError(w, http.StatusBadRequest, "count must be between 1 and 100")
		return
	case count > capsules.MaxForkCount:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Wrenn makes at most %d copies per fork request (asked: %d)", capsules.MaxForkCount, count))
		return
	}
	timeout := int64(15) // E2B's default
	if body.Timeout != nil && *body.Timeout > 0 {
		timeout = *body.Timeout
	} else if body.Timeout != nil && *body.Timeout < 0 {
		writeError(w, http.StatusBadRequest, "timeout must not be negative")
		return
	}
	res, err := h.cfg.Capsules.Fork(r.Context(), scope(r), chi.URLParam(r, "id"), count)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]forkResult, 0, len(res.Copies))
	for _, cp := range res.Copies {
		if _, err := h.cfg.Capsules.SetTimeout(r.Context(), scope(r), cp.Capsule.ID, &timeout); err != nil {
			out = append(out, forkResult{Error: &apiError{Code: http.StatusServiceUnavailable, Message: "the copy " + cp.Capsule.ID + " runs but its timeout could not be set: " + clip(err.Error())}})
			continue
		}
		sb := h.toSandbox(cp.Capsule)
		out = append(out, forkResult{Sandbox: &sb})
	}
	writeJSON(w, http.StatusCreated, out)
}
