package api

// Admin panel (/v1/admin/…): users, teams, templates, builds, capsules of
// every team, and the platform audit log. mountAdmin is called inside the
// /admin route group, which already requires authentication and platform
// admin; every state-changing handler here records an admin-scope audit
// entry under the platform team, failed attempts included.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// mountAdmin adds the admin-panel routes to r (the /v1/admin group).
func (a *API) mountAdmin(r chi.Router) {
	r.Get("/users", a.adminListUsers)
	r.Get("/users/{userID}", a.adminGetUser)
	r.Put("/users/{userID}/active", a.adminSetUserActive)
	r.Put("/users/{userID}/admin", a.adminSetUserAdmin)
	r.Delete("/users/{userID}", a.adminDeleteUser)

	r.Get("/teams", a.adminListTeams)
	r.Put("/teams/{teamID}/byoc", a.adminSetTeamBYOC)
	r.Delete("/teams/{teamID}", a.adminDeleteTeam)
	r.Patch("/teams/{teamID}", a.adminUpdateTeam)

	r.Get("/templates", a.adminListTemplates)
	r.Delete("/templates/{templateID}", a.adminDeleteTemplate)

	r.Get("/builds", a.adminListBuilds)
	r.Post("/builds", a.adminCreateBuild)
	r.Post("/builds/{buildID}/cancel", a.adminCancelBuild)
	r.Get("/builds/{buildID}/logs", a.adminBuildLogs)

	r.Get("/capsules", a.adminListCapsules)
	r.Get("/capsules/{capsuleID}", a.adminGetCapsule)
	r.Delete("/capsules/{capsuleID}", a.adminDeleteCapsule)
	r.Post("/capsules/{capsuleID}/pause", a.adminPauseCapsule)
	r.Post("/capsules/{capsuleID}/resume", a.adminResumeCapsule)

	r.Get("/audit-logs", a.adminAuditLogs)
}

// recordAdmin audits an admin-panel action; err marks it failed.
func (a *API) recordAdmin(r *http.Request, resourceType, resourceID, action string, err error, meta map[string]any) {
	if a.cfg.Audit == nil {
		return
	}
	a.cfg.Audit.Admin(r.Context(), audit.Entry{
		Actor: actor(caller(r.Context())), ResourceType: resourceType, ResourceID: resourceID,
		Action: action, Failed: err != nil, Metadata: meta,
	})
}

func toAdminUserJSON(u store.User) wrennapi.AdminUser {
	return wrennapi.AdminUser{
		ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, EmailVerified: u.EmailVerified, CreatedAt: u.CreatedAt,
		Status: wrennapi.AdminUserStatus(u.Status), DeletedAt: u.DeletedAt,
	}
}

// queryInt parses an optional integer query parameter within [lo, hi].
func queryInt(r *http.Request, name string, lo, hi int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, errorf(CodeInvalidArgument, "%s must be an integer from %d to %d", name, lo, hi)
	}
	return n, nil
}

func (a *API) adminListUsers(w http.ResponseWriter, r *http.Request) {
	limit, err := queryInt(r, "limit", 1, 1000)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	offset, err := queryInt(r, "offset", 0, 1<<30)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	q := r.URL.Query().Get("q")
	if len(q) > 254 {
		a.writeError(w, r, errorf(CodeInvalidArgument, "q is too long"))
		return
	}
	us, err := a.cfg.Store.ListUsers(r.Context(), store.UserFilter{Search: q, Limit: limit, Offset: offset})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.AdminUser, 0, len(us))
	for _, u := range us {
		out = append(out, toAdminUserJSON(u))
	}
	writeJSON(w, http.StatusOK, wrennapi.AdminUserList{Users: out})
}

// pathUser reads the {userID} user.
func (a *API) pathUser(r *http.Request) (store.User, error) {
	id := chi.URLParam(r, "userID")
	if err := validID(store.PrefixUser, id); err != nil {
		return store.User{}, err
	}
	u, err := a.cfg.Store.GetUser(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return store.User{}, errorf(CodeNotFound, "user %q not found", id)
	}
	return u, err
}

func (a *API) adminGetUser(w http.ResponseWriter, r *http.Request) {
	u, err := a.pathUser(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toAdminUserJSON(u))
}

// lastAdminError explains a refused change that would leave no admin.
func lastAdminError(err error) error {
	if errors.Is(err, store.ErrLastAdmin) {
		return &Error{Code: CodeConflict, Message: "this user is the last active platform admin; grant admin to someone else first"}
	}
	return err
}

func (a *API) adminSetUserActive(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetActive
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Active == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "active (boolean) is required"))
		return
	}
	u, err := a.pathUser(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if u.DeletedAt != nil {
		a.writeError(w, r, errorf(CodeConflict, "user %s is deleted", u.ID))
		return
	}
	action := "deactivate"
	if *req.Active {
		action = "activate"
	}
	err = a.cfg.Store.SetUserActive(context.WithoutCancel(r.Context()), u.ID, *req.Active)
	a.recordAdmin(r, "user", u.ID, action, err, map[string]any{"email": u.Email, "from": string(u.Status)})
	if err != nil {
		a.writeError(w, r, lastAdminError(err))
		return
	}
	u, err = a.cfg.Store.GetUser(r.Context(), u.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toAdminUserJSON(u))
}

// adminSetUserAdmin grants or revokes platform admin. Both are idempotent
// (200 with "changed": false); a revoke that would leave no active admin
// is refused by the store's single conditional statement (409).
func (a *API) adminSetUserAdmin(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetAdmin
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Admin == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "admin (boolean) is required"))
		return
	}
	u, err := a.pathUser(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if u.DeletedAt != nil {
		a.writeError(w, r, errorf(CodeConflict, "user %s is deleted", u.ID))
		return
	}
	ctx := context.WithoutCancel(r.Context())
	var changed bool
	action := "revoke_admin"
	if *req.Admin {
		action = "grant_admin"
		changed, err = a.cfg.Store.GrantUserAdmin(ctx, u.ID)
	} else {
		changed, err = a.cfg.Store.RevokeUserAdmin(ctx, u.ID)
	}
	self := caller(r.Context()).UserID == u.ID
	a.recordAdmin(r, "user", u.ID, action, err, map[string]any{"email": u.Email, "changed": changed, "self": self})
	if err != nil {
		a.writeError(w, r, lastAdminError(err))
		return
	}
	u, err = a.cfg.Store.GetUser(ctx, u.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wrennapi.AdminUserChange{User: toAdminUserJSON(u), Changed: changed})
}

// adminDeleteUser soft-deletes a user: the row stays (scrubbed), their
// memberships, links and tokens go, and their audit entries are
// anonymised.
func (a *API) adminDeleteUser(w http.ResponseWriter, r *http.Request) {
	u, err := a.pathUser(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if u.DeletedAt != nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	err = a.cfg.Store.SoftDeleteUser(context.WithoutCancel(r.Context()), u.ID)
	// The entry names the user by ID only: their email is being scrubbed.
	a.recordAdmin(r, "user", u.ID, "delete", err, nil)
	if err != nil {
		a.writeError(w, r, lastAdminError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) adminListTeams(w http.ResponseWriter, r *http.Request) {
	ts, err := a.cfg.Store.ListTeams(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.AdminTeam, 0, len(ts))
	for _, t := range ts {
		out = append(out, toAdminTeamJSON(t))
	}
	writeJSON(w, http.StatusOK, wrennapi.AdminTeamList{Teams: out})
}

func (a *API) pathTeam(r *http.Request) (store.Team, error) {
	id := chi.URLParam(r, "teamID")
	if err := validID(store.PrefixTeam, id); err != nil {
		return store.Team{}, err
	}
	t, err := a.cfg.Store.GetTeam(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Team{}, errorf(CodeNotFound, "team %q not found", id)
	}
	return t, err
}

func (a *API) adminSetTeamBYOC(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.SetBYOC
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.BYOC == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "byoc (boolean) is required"))
		return
	}
	t, err := a.pathTeam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	err = a.cfg.Store.SetTeamBYOC(context.WithoutCancel(r.Context()), t.ID, *req.BYOC)
	a.recordAdmin(r, "team", t.ID, "set_byoc", err, map[string]any{"byoc": *req.BYOC, "from": t.IsBYOC})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	t.IsBYOC = *req.BYOC
	writeJSON(w, http.StatusOK, toTeamJSON(t))
}

// adminDeleteTeam deletes a team with everything in it: the capsule
// service destroys its capsules on their hosts (best-effort) and removes
// the team in one cascade.
func (a *API) adminDeleteTeam(w http.ResponseWriter, r *http.Request) {
	t, err := a.pathTeam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if t.IsPlatform || t.ID == store.PlatformTeamID {
		a.writeError(w, r, errorf(CodeConflict, "the platform team cannot be deleted"))
		return
	}
	res, err := a.capsules.DeleteTeam(r.Context(), t.ID)
	a.recordAdmin(r, "team", t.ID, "delete", err, map[string]any{
		"name": t.Name, "capsules": len(res.Capsules), "capsules_not_destroyed": res.NotDestroyed,
	})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) adminListTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := a.cfg.Store.AdminListTemplates(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.AdminTemplate, 0, len(ts))
	for _, t := range ts {
		out = append(out, wrennapi.AdminTemplate{
			ID: t.ID, Name: t.Name, Public: t.Public, SizeBytes: t.SizeBytes, CreatedAt: t.CreatedAt, TeamID: t.TeamID,
			CapsuleInternet: t.CapsuleInternet,
		})
	}
	writeJSON(w, http.StatusOK, wrennapi.AdminTemplateList{Templates: out})
}

func (a *API) adminDeleteTemplate(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "templateID")
	if err := validID(store.PrefixTemplate, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	ts, err := a.cfg.Store.AdminListTemplates(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	var tmpl *store.Template
	for i := range ts {
		if ts[i].ID == id {
			tmpl = &ts[i]
			break
		}
	}
	if tmpl == nil {
		a.writeError(w, r, errorf(CodeNotFound, "template %q not found", id))
		return
	}
	err = a.capsules.DeleteTemplate(r.Context(), *tmpl)
	a.recordAdmin(r, "template", tmpl.ID, "delete", err, map[string]any{"name": tmpl.Name, "team_id": tmpl.TeamID})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// toBuildJSON is a build as the API shows it; the stored spec (JSON of a
// builds.Spec) is decoded into the document's BuildSpec, and left out
// when it does not decode.
func toBuildJSON(b store.Build) wrennapi.Build {
	j := wrennapi.Build{
		ID: b.ID, TeamID: b.TeamID, TemplateName: b.TemplateName, TemplateID: b.TemplateID, Status: wrennapi.BuildStatus(b.Status),
		Error: b.Error, CreatedBy: b.CreatedBy, CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt, FinishedAt: b.FinishedAt,
	}
	var bs builds.Spec
	_ = json.Unmarshal(b.Spec, &bs)
	j.Kind = buildKind(&bs)
	if j.Kind != wrennapi.BuildKindSpec {
		j.Recipe = bs.Recipe // a recipe build's spec is its Wrennfile
		return j
	}
	if len(b.Spec) > 0 {
		var spec wrennapi.BuildSpec
		if json.Unmarshal(b.Spec, &spec) == nil {
			j.Spec = &spec
		}
	}
	return j
}

// buildSpec is the builds package's form of a requested spec.
func buildSpec(s *wrennapi.BuildSpec) *builds.Spec {
	return &builds.Spec{
		From: s.From, Run: s.Run, Env: s.Env, Workdir: s.Workdir, VCPUs: s.VCPUs, MemoryMB: s.MemoryMB,
		DiskSizeMB: s.DiskSizeMB, TimeoutSec: s.TimeoutSec, AllowInternet: s.AllowInternet,
	}
}

func (a *API) adminListBuilds(w http.ResponseWriter, r *http.Request) {
	bs, err := a.cfg.Store.AdminListBuilds(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Build, 0, len(bs))
	for _, b := range bs {
		out = append(out, toBuildJSON(b))
	}
	writeJSON(w, http.StatusOK, wrennapi.BuildList{Builds: out})
}

var templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// adminCreateBuild queues a template build (status pending) for a team
// (default: the platform team, whose templates are public). The spec is
// validated here (builds.Spec); internal/builds runs the build.
func (a *API) adminCreateBuild(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateBuild
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if !templateNameRE.MatchString(req.TemplateName) {
		a.writeError(w, r, errorf(CodeInvalidArgument, "template_name must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"))
		return
	}
	if req.Spec == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "spec is required: {\"from\": template, \"run\": [shell commands], …}"))
		return
	}
	spec := buildSpec(req.Spec)
	if err := spec.Normalize(); err != nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "%s", err.Error()))
		return
	}
	ctx := r.Context()
	if req.TeamID == "" {
		req.TeamID = store.PlatformTeamID
	} else if _, err := a.cfg.Store.GetTeam(ctx, req.TeamID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			err = errorf(CodeNotFound, "team %q not found", clip(req.TeamID))
		}
		a.writeError(w, r, err)
		return
	}
	if _, err := builds.ResolveFrom(ctx, a.cfg.Store, req.TeamID, spec.From); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			err = errorf(CodeInvalidArgument, "spec.from: template %q not found for team %s", spec.From, req.TeamID)
		}
		a.writeError(w, r, err)
		return
	}
	if t, err := a.cfg.Store.GetTemplateByName(ctx, req.TeamID, req.TemplateName); err == nil && t.TeamID == req.TeamID {
		a.writeError(w, r, errorf(CodeConflict, "team %s already has a template named %q; delete it first", req.TeamID, req.TemplateName))
		return
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.writeError(w, r, err)
		return
	}
	existing, err := a.cfg.Store.ListBuilds(ctx, req.TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	for _, b := range existing {
		if b.TemplateName == req.TemplateName && (b.Status == store.BuildPending || b.Status == store.BuildRunning) {
			a.writeError(w, r, errorf(CodeConflict, "build %s of template %q is already %s", b.ID, req.TemplateName, b.Status))
			return
		}
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	b, err := a.cfg.Store.CreateBuild(context.WithoutCancel(ctx), store.Build{
		ID: store.NewID(store.PrefixBuild), TeamID: req.TeamID, TemplateName: req.TemplateName,
		Status: store.BuildPending, Spec: specJSON, CreatedBy: caller(ctx).UserID,
	})
	a.recordAdmin(r, "build", b.ID, "create", err, map[string]any{"template_name": req.TemplateName, "team_id": req.TeamID})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toBuildJSON(b))
}

// adminCancelBuild cancels a pending or running build; a finished one is
// a 409.
func (a *API) adminCancelBuild(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "buildID")
	if err := validID(store.PrefixBuild, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	bs, err := a.cfg.Store.AdminListBuilds(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	var b *store.Build
	for i := range bs {
		if bs[i].ID == id {
			b = &bs[i]
			break
		}
	}
	if b == nil {
		a.writeError(w, r, errorf(CodeNotFound, "build %q not found", id))
		return
	}
	ctx := context.WithoutCancel(r.Context())
	ok, err := a.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID,
		[]store.BuildStatus{store.BuildPending, store.BuildRunning}, store.BuildCancelled, "cancelled by a platform admin", "")
	if err == nil && !ok {
		err = errorf(CodeConflict, "build %s is already %s", b.ID, b.Status)
		if cur, gerr := a.cfg.Store.GetBuild(ctx, b.TeamID, b.ID); gerr == nil {
			err = errorf(CodeConflict, "build %s is already %s", b.ID, cur.Status)
		}
	}
	a.recordAdmin(r, "build", b.ID, "cancel", err, map[string]any{"template_name": b.TemplateName, "team_id": b.TeamID})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	cur, err := a.cfg.Store.GetBuild(ctx, b.TeamID, b.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toBuildJSON(cur))
}

func toAdminCapsule(c store.Capsule) wrennapi.AdminCapsule {
	return wrennapi.AdminCapsule{
		ID: c.ID, Status: wrennapi.AdminCapsuleStatus(c.Status), ErrorReason: c.ErrorReason, TemplateID: c.TemplateID,
		HostID: c.HostID, VCPUs: c.VCPUs, MemoryMB: c.MemoryMB, DiskSizeMB: c.DiskSizeMB, TimeoutSec: c.TimeoutSec,
		AllowInternet: c.AllowInternet, ExpiresAt: c.ExpiresAt, Public: c.Public, CreatedAt: c.CreatedAt,
		UpdatedAt: c.UpdatedAt, PausedAt: c.PausedAt, TeamID: c.TeamID, Network: toNetworkJSON(c.Network),
	}
}

func (a *API) adminListCapsules(w http.ResponseWriter, r *http.Request) {
	f, err := listFilter(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	caps, next, err := a.capsules.List(r.Context(), adminScope(r), f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.AdminCapsule, 0, len(caps))
	for _, c := range caps {
		out = append(out, toAdminCapsule(c))
	}
	writeJSON(w, http.StatusOK, wrennapi.AdminCapsuleList{Capsules: out, NextCursor: next})
}

func (a *API) adminGetCapsule(w http.ResponseWriter, r *http.Request) {
	c, err := a.capsules.Get(r.Context(), adminScope(r), capsuleID(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toAdminCapsule(c))
}

// adminDeleteCapsule destroys any team's capsule. With ?force=true the
// capsule is forgotten even when its host cannot be reached.
func (a *API) adminDeleteCapsule(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "true"
	if err := a.capsules.Destroy(r.Context(), adminScope(r), capsuleID(r), capsules.DestroyOptions{Force: force}); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) adminPauseCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Pause
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	res, err := a.capsules.Pause(r.Context(), adminScope(r), capsuleID(r), req.ToDisk)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(res.Capsule))
}

func (a *API) adminResumeCapsule(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Resume
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	res, err := a.capsules.Resume(r.Context(), adminScope(r), capsuleID(r), req.TimeoutSec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toCapsuleJSON(res.Capsule))
}

// adminAuditLogs answers GET /v1/admin/audit-logs: every team's and the
// admin panel's entries, filtered by team_id, actor_id, resource_type,
// action, scope and from/to (RFC 3339), newest first with a keyset cursor.
func (a *API) adminAuditLogs(w http.ResponseWriter, r *http.Request) {
	f, err := auditFilterFromQuery(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if t := r.URL.Query().Get("team_id"); t != "" {
		if err := validID(store.PrefixTeam, t); err != nil {
			a.writeError(w, r, err)
			return
		}
		f.TeamID = t
	}
	a.writeAuditPage(w, r, f)
}

func toAdminTeamJSON(t store.Team) wrennapi.AdminTeam {
	return wrennapi.AdminTeam{
		ID: t.ID, Name: t.Name, IsBYOC: t.IsBYOC, IsPlatform: t.IsPlatform, CreatedAt: t.CreatedAt,
		CapsuleInternet: t.CapsuleInternet, AllowedPrivateRanges: t.AllowedPrivateRanges, DefaultIsolation: t.DefaultIsolation,
	}
}

// adminUpdateTeam is PATCH /v1/admin/teams/{teamID}: a platform admin
// sets a team's operator settings, today allowed_private_ranges (private
// ranges its capsules may reach: BYOC teams reaching their own networks;
// docs/NETWORK.md). The ranges are validated by
// capsules.CheckPrivateRanges (400 naming the bad entry, nothing
// changed) and go to the agent with the team's next creates and network
// updates. Audited.
func (a *API) adminUpdateTeam(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.AdminTeamUpdate
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.AllowedPrivateRanges == nil && req.DefaultIsolation == nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "give allowed_private_ranges or default_isolation"))
		return
	}
	var ranges []string
	if req.AllowedPrivateRanges != nil {
		var err error
		if ranges, err = capsules.CheckPrivateRanges(*req.AllowedPrivateRanges); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	if req.DefaultIsolation != nil {
		if err := capsules.CheckIsolation(*req.DefaultIsolation); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	t, err := a.pathTeam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.AllowedPrivateRanges != nil {
		err = a.cfg.Store.SetTeamPrivateRanges(context.WithoutCancel(r.Context()), t.ID, ranges)
		a.recordAdmin(r, "team", t.ID, "set_private_ranges", err, map[string]any{"allowed_private_ranges": ranges, "from": t.AllowedPrivateRanges})
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		t.AllowedPrivateRanges = ranges
	}
	if req.DefaultIsolation != nil {
		err = a.cfg.Store.SetTeamDefaultIsolation(context.WithoutCancel(r.Context()), t.ID, *req.DefaultIsolation)
		a.recordAdmin(r, "team", t.ID, "set_default_isolation", err, map[string]any{"default_isolation": *req.DefaultIsolation, "from": t.DefaultIsolation})
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		t.DefaultIsolation = *req.DefaultIsolation
	}
	writeJSON(w, http.StatusOK, toAdminTeamJSON(t))
}
