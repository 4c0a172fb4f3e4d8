package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

func toTeamJSON(t store.Team) wrennapi.Team {
	return wrennapi.Team{
		ID: t.ID, Name: t.Name, IsBYOC: t.IsBYOC, CreatedAt: t.CreatedAt, CapsuleInternet: t.CapsuleInternet,
		DefaultIsolation: t.DefaultIsolation, OnTimeout: t.Lifecycle.OnTimeout, AutoResume: t.Lifecycle.AutoResume,
	}
}

// validID checks the shape of a path ID so garbage never reaches the store.
func validID(prefix, id string) error {
	rest, ok := strings.CutPrefix(id, prefix+"-")
	if !ok || len(rest) == 0 || len(rest) > 64 {
		return errorf(CodeNotFound, "%s %q not found", idNoun(prefix), clip(id))
	}
	for _, c := range rest {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return errorf(CodeNotFound, "%s %q not found", idNoun(prefix), clip(id))
		}
	}
	return nil
}

func idNoun(prefix string) string {
	switch prefix {
	case store.PrefixCapsule:
		return "capsule"
	case store.PrefixTeam:
		return "team"
	case store.PrefixUser:
		return "user"
	case store.PrefixAPIKey:
		return "API key"
	case store.PrefixHost:
		return "host"
	case store.PrefixTemplate:
		return "template"
	case store.PrefixInvite:
		return "invite"
	}
	return "resource"
}

func (a *API) listTeams(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	out := []wrennapi.Team{}
	if p.KeyID != "" || p.UserID == "" {
		t, err := a.cfg.Store.GetTeam(r.Context(), p.TeamID)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		tj := toTeamJSON(t)
		tj.Role = string(p.Role)
		out = append(out, tj)
	} else {
		ms, err := a.cfg.Store.ListTeamsForUser(r.Context(), p.UserID)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		for _, m := range ms {
			tj := toTeamJSON(m.Team)
			tj.Role = string(m.Role)
			out = append(out, tj)
		}
	}
	writeJSON(w, http.StatusOK, wrennapi.TeamList{Teams: out})
}

func (a *API) needUser(p *principal) error {
	if p.UserID == "" || p.KeyID != "" {
		return errorf(CodePermissionDenied, "this action needs a user session, not an API key")
	}
	return nil
}

func (a *API) createTeam(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	var req wrennapi.TeamName
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.needUser(p); err != nil {
		a.writeError(w, r, err)
		return
	}
	name, err := validName("name", req.Name, 100)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	t, err := a.cfg.Store.CreateTeam(r.Context(), store.Team{Name: name})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := a.cfg.Store.AddTeamMember(r.Context(), t.ID, p.UserID, store.RoleOwner); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, t.ID, "team", t.ID, "create", nil, map[string]any{"name": t.Name})
	tj := toTeamJSON(t)
	tj.Role = string(store.RoleOwner)
	writeJSON(w, http.StatusCreated, tj)
}

// teamRole checks the path team and the caller's role in it; a team the
// caller does not belong to is "not found".
func (a *API) teamRole(r *http.Request, minRole store.Role) (string, store.Role, error) {
	p := caller(r.Context())
	teamID := chi.URLParam(r, "teamID")
	if err := validID(store.PrefixTeam, teamID); err != nil {
		return "", "", err
	}
	var role store.Role
	switch {
	case p.KeyID != "":
		if teamID != p.TeamID {
			return "", "", errorf(CodeNotFound, "team %q not found", teamID)
		}
		role = p.Role
	default:
		m, err := a.cfg.Store.GetTeamMember(r.Context(), teamID, p.UserID)
		if errors.Is(err, store.ErrNotFound) {
			return "", "", errorf(CodeNotFound, "team %q not found", teamID)
		}
		if err != nil {
			return "", "", err
		}
		role = m.Role
	}
	if !roleAtLeast(role, minRole) {
		return "", "", errorf(CodePermissionDenied, "this needs the %s role in the team", minRole)
	}
	return teamID, role, nil
}

// updateTeam renames the team and/or sets its capsules' default
// allow_internet (team owner or admin).
func (a *API) updateTeam(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.TeamUpdate
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	teamID, _, err := a.teamRole(r, store.RoleAdmin)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Name == nil && req.CapsuleInternet == nil && req.DefaultIsolation == nil && req.OnTimeout == nil && req.AutoResume == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "give name, capsule_internet, default_isolation, on_timeout or auto_resume"))
		return
	}
	if req.DefaultIsolation != nil {
		if err := capsules.CheckIsolation(*req.DefaultIsolation); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	if req.OnTimeout != nil {
		if err := capsules.ValidOnTimeout(*req.OnTimeout); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	if req.Name != nil {
		name, err := validName("name", *req.Name, 100)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		if err := a.cfg.Store.RenameTeam(r.Context(), teamID, name); err != nil {
			a.writeError(w, r, err)
			return
		}
		a.audit(r, teamID, "team", teamID, "rename", nil, map[string]any{"name": name})
	}
	if req.CapsuleInternet != nil {
		if err := a.cfg.Store.SetTeamCapsuleInternet(r.Context(), teamID, req.CapsuleInternet); err != nil {
			a.writeError(w, r, err)
			return
		}
		a.audit(r, teamID, "team", teamID, "set_capsule_internet", nil, map[string]any{"capsule_internet": *req.CapsuleInternet})
	}
	if req.DefaultIsolation != nil {
		if err := a.cfg.Store.SetTeamDefaultIsolation(r.Context(), teamID, *req.DefaultIsolation); err != nil {
			a.writeError(w, r, err)
			return
		}
		a.audit(r, teamID, "team", teamID, "set_default_isolation", nil, map[string]any{"default_isolation": *req.DefaultIsolation})
	}
	if req.OnTimeout != nil || req.AutoResume != nil {
		cur, err := a.cfg.Store.GetTeam(r.Context(), teamID)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		lc := cur.Lifecycle
		if req.OnTimeout != nil {
			lc.OnTimeout = req.OnTimeout
		}
		if req.AutoResume != nil {
			lc.AutoResume = req.AutoResume
		}
		if err := a.cfg.Store.SetTeamLifecycle(r.Context(), teamID, lc); err != nil {
			a.writeError(w, r, err)
			return
		}
		a.audit(r, teamID, "team", teamID, "set_lifecycle", nil, map[string]any{"on_timeout": lc.OnTimeout, "auto_resume": lc.AutoResume})
	}
	t, err := a.cfg.Store.GetTeam(r.Context(), teamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTeamJSON(t))
}

func (a *API) deleteTeam(w http.ResponseWriter, r *http.Request) {
	teamID, _, err := a.teamRole(r, store.RoleOwner)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if teamID == store.PlatformTeamID {
		a.writeError(w, r, errorf(CodeConflict, "the platform team cannot be deleted"))
		return
	}
	caps, _, err := a.cfg.Store.ListCapsules(r.Context(), teamID, store.CapsuleFilter{Limit: 1})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if len(caps) > 0 {
		a.writeError(w, r, errorf(CodeConflict, "delete the team's capsules first"))
		return
	}
	if err := a.cfg.Store.DeleteTeam(r.Context(), teamID); err != nil {
		a.writeError(w, r, err)
		return
	}
	// The team's own log goes with it; the platform log keeps the trace.
	a.auditAdmin(r, "team", teamID, "delete", map[string]any{"by_owner": true})
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) switchTeam(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if err := a.needUser(p); err != nil {
		a.writeError(w, r, err)
		return
	}
	teamID, _, err := a.teamRole(r, store.RoleMember)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	t, err := a.cfg.Store.GetTeam(r.Context(), teamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeSession(w, r, http.StatusOK, p.User, t)
}

func (a *API) listMembers(w http.ResponseWriter, r *http.Request) {
	teamID, _, err := a.teamRole(r, store.RoleMember)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ms, err := a.cfg.Store.ListTeamMembers(r.Context(), teamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, wrennapi.Member{UserID: m.UserID, Email: m.Email, Name: m.Name, Role: wrennapi.MemberRole(m.Role), CreatedAt: m.CreatedAt})
	}
	writeJSON(w, http.StatusOK, wrennapi.MemberList{Members: out})
}

func parseRole(s string) (store.Role, error) {
	switch store.Role(s) {
	case store.RoleOwner, store.RoleAdmin, store.RoleMember:
		return store.Role(s), nil
	}
	return "", errorf(CodeInvalidArgument, "role must be owner, admin or member")
}

func (a *API) updateMember(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetMemberRole
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	teamID, myRole, err := a.teamRole(r, store.RoleAdmin)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	role, err := parseRole(string(req.Role))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	userID := chi.URLParam(r, "userID")
	if err := validID(store.PrefixUser, userID); err != nil {
		a.writeError(w, r, err)
		return
	}
	target, err := a.cfg.Store.GetTeamMember(r.Context(), teamID, userID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if (role == store.RoleOwner || target.Role == store.RoleOwner) && myRole != store.RoleOwner {
		a.writeError(w, r, errorf(CodePermissionDenied, "only an owner can grant or change the owner role"))
		return
	}
	if target.Role == store.RoleOwner && role != store.RoleOwner {
		if err := a.keepAnOwner(r, teamID, userID); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	if err := a.cfg.Store.UpdateTeamMemberRole(r.Context(), teamID, userID, role); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, teamID, "member", userID, "update_role", nil, map[string]any{"from": string(target.Role), "to": string(role)})
	writeJSON(w, http.StatusOK, wrennapi.MemberRoleChanged{UserID: userID, Role: wrennapi.MemberRoleChangedRole(role)})
}

// keepAnOwner refuses a change that would leave the team without owners.
func (a *API) keepAnOwner(r *http.Request, teamID, leaving string) error {
	ms, err := a.cfg.Store.ListTeamMembers(r.Context(), teamID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Role == store.RoleOwner && m.UserID != leaving {
			return nil
		}
	}
	return errorf(CodeConflict, "a team needs at least one owner")
}

func (a *API) removeMember(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	userID := chi.URLParam(r, "userID")
	minRole := store.RoleAdmin
	if userID == p.UserID {
		minRole = store.RoleMember // leaving a team is always allowed
	}
	teamID, myRole, err := a.teamRole(r, minRole)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := validID(store.PrefixUser, userID); err != nil {
		a.writeError(w, r, err)
		return
	}
	target, err := a.cfg.Store.GetTeamMember(r.Context(), teamID, userID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if target.Role == store.RoleOwner {
		if myRole != store.RoleOwner {
			a.writeError(w, r, errorf(CodePermissionDenied, "only an owner can remove an owner"))
			return
		}
		if err := a.keepAnOwner(r, teamID, userID); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	if err := a.cfg.Store.RemoveTeamMember(r.Context(), teamID, userID); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, teamID, "member", userID, "remove", nil, map[string]any{"role": string(target.Role)})
	w.WriteHeader(http.StatusNoContent)
}

func toInviteJSON(inv store.Invite) wrennapi.Invite {
	return wrennapi.Invite{ID: inv.ID, Email: inv.Email, Role: wrennapi.InviteRole(inv.Role), CreatedAt: inv.CreatedAt, ExpiresAt: inv.ExpiresAt}
}

func (a *API) createInvite(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateInvite
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	teamID, myRole, err := a.teamRole(r, store.RoleAdmin)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	email, err := validEmail(req.Email)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Role == "" {
		req.Role = wrennapi.CreateInviteRole(store.RoleMember)
	}
	role, err := parseRole(string(req.Role))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if role == store.RoleOwner && myRole != store.RoleOwner {
		a.writeError(w, r, errorf(CodePermissionDenied, "only an owner can invite an owner"))
		return
	}
	token := auth.RandomToken("wri_")
	inv, err := a.cfg.Store.CreateInvite(r.Context(), store.Invite{
		ID: store.NewID(store.PrefixInvite), TeamID: teamID, Email: email, Role: role,
		TokenHash: auth.HashToken(token), InvitedBy: caller(r.Context()).UserID,
		ExpiresAt: time.Now().Add(7 * 24 * time.Hour),
	})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, teamID, "invite", inv.ID, "create", nil, map[string]any{"email": inv.Email, "role": string(inv.Role)})
	out := toInviteJSON(inv)
	out.Token = token
	writeJSON(w, http.StatusCreated, out)
}

func (a *API) listInvites(w http.ResponseWriter, r *http.Request) {
	teamID, _, err := a.teamRole(r, store.RoleAdmin)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	invs, err := a.cfg.Store.ListInvites(r.Context(), teamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Invite, 0, len(invs))
	for _, inv := range invs {
		out = append(out, toInviteJSON(inv))
	}
	writeJSON(w, http.StatusOK, wrennapi.InviteList{Invites: out})
}

func (a *API) deleteInvite(w http.ResponseWriter, r *http.Request) {
	teamID, _, err := a.teamRole(r, store.RoleAdmin)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	id := chi.URLParam(r, "inviteID")
	if err := validID(store.PrefixInvite, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.DeleteInvite(r.Context(), teamID, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, teamID, "invite", id, "delete", nil, nil)
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) acceptInvite(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Token
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	p := caller(r.Context())
	if err := a.needUser(p); err != nil {
		a.writeError(w, r, err)
		return
	}
	inv, err := a.cfg.Store.GetInviteByTokenHash(r.Context(), auth.HashToken(req.Token))
	if errors.Is(err, store.ErrNotFound) || (err == nil && inv.Email != p.User.Email) {
		a.writeError(w, r, errorf(CodeNotFound, "invite not found (it is addressed to another email, or was withdrawn)"))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	m, err := a.cfg.Store.AcceptInvite(r.Context(), inv.ID, p.UserID)
	if errors.Is(err, store.ErrConflict) {
		a.writeError(w, r, errorf(CodeConflict, "the invite was already used or has expired"))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, m.TeamID, "member", p.UserID, "join", nil, map[string]any{"invite_id": inv.ID, "role": string(m.Role)})
	writeJSON(w, http.StatusOK, wrennapi.InviteAccepted{TeamID: m.TeamID, Role: wrennapi.InviteAcceptedRole(m.Role)})
}

// ---- API keys ----

func toKeyJSON(k store.APIKey) wrennapi.APIKey {
	return wrennapi.APIKey{ID: k.ID, Name: k.Name, Prefix: k.Prefix, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt, LastUsedAt: k.LastUsedAt}
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	ks, err := a.cfg.Store.ListAPIKeys(r.Context(), caller(r.Context()).TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.APIKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, toKeyJSON(k))
	}
	writeJSON(w, http.StatusOK, wrennapi.APIKeyList{APIKeys: out})
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateAPIKey
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "creating API keys needs the admin role in the team"))
		return
	}
	name, err := validName("name", req.Name, 100)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	nk := auth.GenerateAPIKey()
	k, err := a.cfg.Store.CreateAPIKey(r.Context(), store.APIKey{TeamID: p.TeamID, Name: name, Prefix: nk.Prefix, Hash: nk.Hash, CreatedBy: p.UserID})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, p.TeamID, "api_key", k.ID, "create", nil, map[string]any{"name": k.Name, "prefix": k.Prefix})
	out := toKeyJSON(k)
	out.Key = nk.Plain
	writeJSON(w, http.StatusCreated, out)
}

func (a *API) deleteKey(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "deleting API keys needs the admin role in the team"))
		return
	}
	id := chi.URLParam(r, "keyID")
	if err := validID(store.PrefixAPIKey, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.DeleteAPIKey(r.Context(), p.TeamID, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	a.audit(r, p.TeamID, "api_key", id, "delete", nil, nil)
	w.WriteHeader(http.StatusNoContent)
}

// ---- templates ----

func toTemplateJSON(t store.Template) wrennapi.Template {
	return wrennapi.Template{
		ID: t.ID, Name: t.Name, Public: t.Public, SizeBytes: t.SizeBytes, CreatedAt: t.CreatedAt, Memory: t.Memory, Shared: t.Checksum != "",
		CapsuleInternet: t.CapsuleInternet, Isolation: t.Isolation, OnTimeout: t.Lifecycle.OnTimeout, AutoResume: t.Lifecycle.AutoResume,
	}
}

func (a *API) listTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := a.cfg.Store.ListTemplates(r.Context(), caller(r.Context()).TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Template, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTemplateJSON(t))
	}
	writeJSON(w, http.StatusOK, wrennapi.TemplateList{Templates: out})
}

func (a *API) getTemplate(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "templateID")
	if err := validID(store.PrefixTemplate, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	t, err := a.cfg.Store.GetTemplate(r.Context(), caller(r.Context()).TeamID, id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTemplateJSON(t))
}
