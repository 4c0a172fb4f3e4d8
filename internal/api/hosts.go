package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// hostCapabilities decodes what h last reported ("{}" when nothing).
func hostCapabilities(h store.Host) hostlink.Capabilities {
	var c hostlink.Capabilities
	_ = json.Unmarshal([]byte(h.Capabilities), &c)
	return c
}

func toHostJSON(h store.Host) wrennapi.Host {
	c := hostCapabilities(h)
	o, free := scheduler.Ratios(h), scheduler.FreeOn(h)
	caps := wrennapi.HostCapabilities{
		Runtimes: c.Runtimes, Isolations: c.Available(), DefaultIsolation: c.DefaultIsolation,
		MemorySnapshots: wrennapi.MemorySnapshots{Available: c.MemorySnapshots, Reason: c.MemorySnapshotsReason},
		Overcommit:      wrennapi.Overcommit{CPU: o.CPU, Memory: o.Memory, Disk: o.Disk},
		Free:            wrennapi.HostFree{VCPUs: free.VCPUs, MemoryMB: free.MemoryMB, DiskMB: free.DiskMB},
	}
	if caps.Runtimes == nil {
		caps.Runtimes = []string{}
	}
	if caps.Isolations == nil {
		caps.Isolations = []string{}
	}
	for _, is := range c.IsolationSupport {
		caps.IsolationSupport = append(caps.IsolationSupport, wrennapi.IsolationSupport{
			Name: is.Name, Available: is.Available, Reason: is.Reason, KVM: is.KVM, Backend: is.Backend,
		})
	}
	if !c.MemorySnapshots && c.MemorySnapshotsReason == "" {
		caps.MemorySnapshots.Reason = "not reported by the host"
	}
	if !c.StartedAt.IsZero() {
		t := c.StartedAt.UTC()
		caps.AgentStartedAt = &t
	}
	for _, p := range c.WarmPools {
		caps.WarmPools = append(caps.WarmPools, wrennapi.WarmPool{
			Template: p.Template, Ready: p.Ready, Target: p.Target, Max: p.Max, Auto: p.Auto,
			Hits: int64(p.Hits), Misses: int64(p.Misses), Limit: p.Limit, //nolint:gosec // counters fit in int64
		})
	}
	return wrennapi.Host{
		ID: h.ID, TeamID: h.TeamID, Address: h.Address, Status: wrennapi.HostStatus(h.Status), VCPUs: h.VCPUs, MemoryMB: h.MemoryMB,
		DiskMB: h.DiskMB, UsedVCPUs: h.UsedVCPUs, UsedMemoryMB: h.UsedMemoryMB, UsedDiskMB: h.UsedDiskMB, LastHeartbeatAt: h.LastHeartbeatAt,
		Capabilities: caps, Drain: toHostDrainJSON(h),
	}
}

// toHostDrainJSON is a host's drain (nil when it is not draining).
func toHostDrainJSON(h store.Host) *wrennapi.HostDrain {
	if h.Drain == store.HostDrainNone {
		return nil
	}
	rep := capsules.ParseDrainReport(h)
	out := &wrennapi.HostDrain{State: wrennapi.HostDrainState(h.Drain), Moved: rep.Moved, Left: []wrennapi.HostDrainCapsule{}}
	if !rep.UpdatedAt.IsZero() {
		t := rep.UpdatedAt.UTC()
		out.UpdatedAt = &t
	}
	for _, l := range rep.Left {
		out.Left = append(out.Left, wrennapi.HostDrainCapsule{CapsuleID: l.ID, Status: l.Status, Reason: l.Reason, Permanent: l.Permanent})
	}
	return out
}

// drainHost answers POST /v1/admin/hosts/{hostID}/drain.
func (a *API) drainHost(w http.ResponseWriter, r *http.Request) {
	a.setDrain(w, r, a.capsules.Drain)
}

// undrainHost answers POST /v1/admin/hosts/{hostID}/undrain.
func (a *API) undrainHost(w http.ResponseWriter, r *http.Request) {
	a.setDrain(w, r, a.capsules.Undrain)
}

func (a *API) setDrain(w http.ResponseWriter, r *http.Request, do func(context.Context, capsules.Scope, string) (store.Host, error)) {
	id := chi.URLParam(r, "hostID")
	if err := validID(store.PrefixHost, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	h, err := do(r.Context(), adminScope(r), id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toHostJSON(h))
}

func (a *API) createHostToken(w http.ResponseWriter, r *http.Request, teamID string, admin bool) {
	p := caller(r.Context())
	tok := auth.RandomToken("wrt_")
	exp := time.Now().Add(a.cfg.HostTokenTTL).UTC()
	if err := a.cfg.Store.CreateHostToken(r.Context(), store.HostToken{
		TokenHash: auth.HashToken(tok), TeamID: teamID, CreatedBy: p.UserID, ExpiresAt: exp,
	}); err != nil {
		a.writeError(w, r, err)
		return
	}
	if admin {
		a.auditAdmin(r, "host_token", "", "create", map[string]any{"team_id": teamID})
	} else {
		a.audit(r, teamID, "host_token", "", "create", nil, nil)
	}
	writeJSON(w, http.StatusCreated, wrennapi.HostToken{Token: tok, TeamID: teamID, ExpiresAt: exp})
}

// createAdminHostToken makes a token for a shared host, or for a team's
// BYOC host when team_id is given.
func (a *API) createAdminHostToken(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateHostToken
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.TeamID != "" {
		if err := validID(store.PrefixTeam, req.TeamID); err != nil {
			a.writeError(w, r, errorf(CodeInvalidArgument, "team_id is not a team id"))
			return
		}
		if _, err := a.cfg.Store.GetTeam(r.Context(), req.TeamID); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	a.createHostToken(w, r, req.TeamID, true)
}

// createTeamHostToken lets an owner or admin of a BYOC team register one
// of the team's own hosts.
func (a *API) createTeamHostToken(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "registering hosts needs the admin role in the team"))
		return
	}
	t, err := a.cfg.Store.GetTeam(r.Context(), p.TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if !t.IsBYOC {
		a.writeError(w, r, errorf(CodePermissionDenied, "the team does not bring its own hosts (BYOC is off)"))
		return
	}
	a.createHostToken(w, r, t.ID, false)
}

// hostUsage is what a host reports (registration and heartbeats) as the
// store keeps it.
func hostUsage(u wrennapi.HostUsage) store.HostUsage {
	out := store.HostUsage{
		Address: u.Address, VCPUs: u.VCPUs, MemoryMB: u.MemoryMB, DiskMB: u.DiskMB,
		UsedVCPUs: u.UsedVCPUs, UsedMemoryMB: u.UsedMemoryMB, UsedDiskMB: u.UsedDiskMB,
		CPUOvercommit: u.CPUOvercommit, MemoryOvercommit: u.MemoryOvercommit, DiskOvercommit: u.DiskOvercommit,
	}
	if u.Capabilities != nil {
		b, _ := json.Marshal(u.Capabilities)
		out.Capabilities = string(b)
	}
	return out
}

func validHostUsage(u wrennapi.HostUsage) error {
	if u.Address != "" {
		addr := u.Address
		if i := strings.Index(addr, "://"); i >= 0 {
			scheme := addr[:i]
			if scheme != "http" && scheme != "https" {
				return errorf(CodeInvalidArgument, "address scheme must be http or https")
			}
			addr = strings.TrimSuffix(addr[i+3:], "/")
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return errorf(CodeInvalidArgument, "address must be host:port (optionally with http:// or https://)")
		}
	}
	for _, v := range []int64{u.VCPUs, u.MemoryMB, u.DiskMB, u.UsedVCPUs, u.UsedMemoryMB, u.UsedDiskMB} {
		if v < 0 || v > 1<<40 {
			return errorf(CodeInvalidArgument, "capacity figures must be between 0 and 2^40")
		}
	}
	if err := (scheduler.Overcommit{CPU: u.CPUOvercommit, Memory: u.MemoryOvercommit, Disk: u.DiskOvercommit}).Validate(); err != nil {
		return errorf(CodeInvalidArgument, "%s", err.Error())
	}
	if c := u.Capabilities; c != nil {
		if len(c.Runtimes) > 16 || len(c.Isolations) > 16 || len(c.MemorySnapshotsReason) > 1024 {
			return errorf(CodeInvalidArgument, "capabilities: at most 16 runtimes and isolations and a reason of at most 1024 bytes")
		}
		for _, v := range append(slices.Clone(c.Runtimes), c.Isolations...) {
			if v == "" || len(v) > 64 {
				return errorf(CodeInvalidArgument, "capabilities: runtime and isolation names are 1 to 64 bytes")
			}
		}
		if len(c.IsolationSupport) > 16 || len(c.DefaultIsolation) > 64 {
			return errorf(CodeInvalidArgument, "capabilities: at most 16 isolations in isolation_support, a default_isolation of at most 64 bytes")
		}
		for _, is := range c.IsolationSupport {
			if is.Name == "" || len(is.Name) > 64 || len(is.Backend) > 64 || len(is.Reason) > 1024 {
				return errorf(CodeInvalidArgument, "capabilities: isolation names and backends are 1 to 64 bytes, reasons at most 1024")
			}
		}
	}
	return nil
}

// registerHost consumes a one-time token and returns the host's
// credential (shown once).
func (a *API) registerHost(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.RegisterHost
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Token == "" {
		a.writeError(w, r, errorf(CodeInvalidArgument, "token is required"))
		return
	}
	if req.Address == "" {
		a.writeError(w, r, errorf(CodeInvalidArgument, "address is required"))
		return
	}
	usage := wrennapi.HostUsage{
		Address: req.Address, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskMB: req.DiskMB,
		UsedVCPUs: req.UsedVCPUs, UsedMemoryMB: req.UsedMemoryMB, UsedDiskMB: req.UsedDiskMB,
		CPUOvercommit: req.CPUOvercommit, MemoryOvercommit: req.MemoryOvercommit, DiskOvercommit: req.DiskOvercommit,
		Capabilities: req.Capabilities,
	}
	if err := validHostUsage(usage); err != nil {
		a.writeError(w, r, err)
		return
	}
	id := store.NewID(store.PrefixHost)
	cred := a.cfg.Agents.Credential(id)
	h, err := a.cfg.Store.RegisterHost(r.Context(), auth.HashToken(req.Token), store.Host{
		ID: id, Address: req.Address, CredentialHash: auth.HashToken(cred),
		VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskMB: req.DiskMB,
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		a.writeError(w, r, errorf(CodeUnauthenticated, "registration token is unknown, used or expired"))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := a.cfg.Store.HostHeartbeat(r.Context(), h.ID, hostUsage(usage)); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.log.InfoContext(r.Context(), "host registered", "host_id", h.ID, "address", h.Address, "team_id", h.TeamID)
	a.cfg.Events.Emit(r.Context(), events.HostTeam(h), events.HostUp, h.ID, map[string]any{"address": h.Address, "registered": true})
	if a.cfg.OnHostReturned != nil {
		a.cfg.OnHostReturned(h.ID)
	}
	writeJSON(w, http.StatusCreated, wrennapi.HostRegistered{
		HostID: h.ID, Credential: cred, HeartbeatIntervalSec: int(a.cfg.HeartbeatInterval.Seconds()),
	})
}

type hostKey struct{}

// requireHost authenticates a host by its credential (Authorization:
// Bearer) and checks it matches the host in the path.
func (a *API) requireHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if cred == "" {
			a.writeError(w, r, errorf(CodeUnauthenticated, "missing host credential"))
			return
		}
		h, err := a.cfg.Store.GetHostByCredentialHash(r.Context(), auth.HashToken(strings.TrimSpace(cred)))
		if errors.Is(err, store.ErrNotFound) {
			a.writeError(w, r, errorf(CodeUnauthenticated, "invalid host credential"))
			return
		}
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		if h.ID != chi.URLParam(r, "hostID") {
			a.writeError(w, r, errorf(CodePermissionDenied, "the credential belongs to another host"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), hostKey{}, h)))
	})
}

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.HostUsage
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := validHostUsage(req); err != nil {
		a.writeError(w, r, err)
		return
	}
	prev, _ := r.Context().Value(hostKey{}).(store.Host)
	if req.Address == "" {
		req.Address = prev.Address
	}
	h, err := a.cfg.Store.HostHeartbeat(r.Context(), prev.ID, hostUsage(req))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if h.Status != store.HostUnavailable && (prev.Status == store.HostUnavailable || prev.LastHeartbeatAt == nil) {
		a.cfg.Events.Emit(r.Context(), events.HostTeam(h), events.HostUp, h.ID, map[string]any{"address": h.Address})
	}
	if a.cfg.OnHostReturned != nil && a.hostReturned(prev, req) {
		a.log.InfoContext(r.Context(), "host answers again after silence or a restart; reconciling it now", "host_id", h.ID)
		a.cfg.OnHostReturned(h.ID)
	}
	status := wrennapi.HeartbeatAnswerStatus(h.Status)
	if h.Drain != store.HostDrainNone {
		status = wrennapi.HeartbeatAnswerStatus(store.HostDraining) // its agent keeps no warm pool meanwhile
	}
	writeJSON(w, http.StatusOK, wrennapi.HeartbeatAnswer{Status: status, HeartbeatIntervalSec: int(a.cfg.HeartbeatInterval.Seconds())})
}

// hostReturned reports whether a heartbeat (req) from a host whose row
// was prev comes after silence (unavailable, no heartbeat yet, or none for
// two intervals) or from a restarted agent (a new start time): what the
// store holds for it may be stale, so it is reconciled at once.
func (a *API) hostReturned(prev store.Host, req wrennapi.HostUsage) bool {
	if prev.Status == store.HostUnavailable || prev.LastHeartbeatAt == nil || time.Since(*prev.LastHeartbeatAt) > 2*a.cfg.HeartbeatInterval {
		return true
	}
	if req.Capabilities == nil || req.Capabilities.StartedAt.IsZero() {
		return false
	}
	return !hostCapabilities(prev).StartedAt.Equal(req.Capabilities.StartedAt)
}

func (a *API) getHost(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "hostID")
	if err := validID(store.PrefixHost, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	h, err := a.cfg.Store.GetHost(r.Context(), id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toHostJSON(h))
}

func (a *API) listHosts(w http.ResponseWriter, r *http.Request) {
	hs, err := a.cfg.Store.ListHosts(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := wrennapi.HostList{Hosts: make([]wrennapi.Host, 0, len(hs))}
	for _, h := range hs {
		out.Hosts = append(out.Hosts, toHostJSON(h))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) deleteHost(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "hostID")
	if err := validID(store.PrefixHost, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.DeleteHost(r.Context(), id); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.cfg.Agents.Forget(id)
	a.auditAdmin(r, "host", id, "delete", nil)
	w.WriteHeader(http.StatusNoContent)
}
