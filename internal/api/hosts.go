package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

func toHostJSON(h store.Host) wrennapi.Host {
	return wrennapi.Host{
		ID: h.ID, TeamID: h.TeamID, Address: h.Address, Status: wrennapi.HostStatus(h.Status), VCPUs: h.VCPUs, MemoryMB: h.MemoryMB,
		DiskMB: h.DiskMB, UsedVCPUs: h.UsedVCPUs, UsedMemoryMB: h.UsedMemoryMB, UsedDiskMB: h.UsedDiskMB, LastHeartbeatAt: h.LastHeartbeatAt,
	}
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

func toHostUsage(u wrennapi.HostUsage) store.HostUsage {
	return store.HostUsage{
		Address: u.Address, VCPUs: u.VCPUs, MemoryMB: u.MemoryMB, DiskMB: u.DiskMB,
		UsedVCPUs: u.UsedVCPUs, UsedMemoryMB: u.UsedMemoryMB, UsedDiskMB: u.UsedDiskMB,
	}
}

func validHostUsage(u store.HostUsage) error {
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
	if err := validHostUsage(toHostUsage(wrennapi.HostUsage{
		Address: req.Address, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskMB: req.DiskMB,
		UsedVCPUs: req.UsedVCPUs, UsedMemoryMB: req.UsedMemoryMB, UsedDiskMB: req.UsedDiskMB,
	})); err != nil {
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
	a.log.InfoContext(r.Context(), "host registered", "host_id", h.ID, "address", h.Address, "team_id", h.TeamID)
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
	usage := toHostUsage(req)
	if err := validHostUsage(usage); err != nil {
		a.writeError(w, r, err)
		return
	}
	h, _ := r.Context().Value(hostKey{}).(store.Host)
	if usage.Address == "" {
		usage.Address = h.Address
	}
	h, err := a.cfg.Store.HostHeartbeat(r.Context(), h.ID, usage)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wrennapi.HeartbeatAnswer{Status: wrennapi.HeartbeatAnswerStatus(h.Status), HeartbeatIntervalSec: int(a.cfg.HeartbeatInterval.Seconds())})
}

func (a *API) listHosts(w http.ResponseWriter, r *http.Request) {
	hs, err := a.cfg.Store.ListHosts(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Host, 0, len(hs))
	for _, h := range hs {
		out = append(out, toHostJSON(h))
	}
	writeJSON(w, http.StatusOK, wrennapi.HostList{Hosts: out})
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
