package api

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// deleteTemplate is DELETE /v1/templates/{templateID}: a team deletes one
// of its own templates (public ones are the admins'), refused with 409 while
// capsules use it; its files go from the host that made it and from the
// shared template store, other hosts' copies with the reconciler. Audited.
func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "templateID")
	if err := validID(store.PrefixTemplate, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	team := caller(r.Context()).TeamID
	t, err := a.cfg.Store.GetTemplate(r.Context(), team, id)
	if err == nil && t.TeamID != team {
		a.writeError(w, r, errorf(CodePermissionDenied, "template %q is public: only platform admins delete it", id))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	err = a.capsules.DeleteTemplate(r.Context(), t)
	a.audit(r, team, "template", t.ID, "delete", err, map[string]any{"name": t.Name})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// updateTemplate is PATCH /v1/templates/{templateID}: an admin of the
// template's team sets (or, with null, clears) its capsule_internet
// default, which applies to capsules created from it without an
// allow_internet of their own (docs/NETWORK.md). Public templates of
// another team are 403, unknown ones 404. Audited.
func (a *API) updateTemplate(w http.ResponseWriter, r *http.Request) {
	// The fields of wrennapi.TemplateUpdate, raw: a raw value tells null
	// (clear) from absent (nothing to change).
	var req map[string]json.RawMessage
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	raw, ok := req["capsule_internet"]
	rawIso, okIso := req["isolation"]
	rawOnTimeout, okOnTimeout := req["on_timeout"]
	rawAutoResume, okAutoResume := req["auto_resume"]
	for k := range req {
		if k != "capsule_internet" && k != "isolation" && k != "on_timeout" && k != "auto_resume" {
			a.writeError(w, r, errorf(CodeInvalidArgument, "unknown field %q", k))
			return
		}
	}
	if !ok && !okIso && !okOnTimeout && !okAutoResume {
		a.writeError(w, r, errorf(CodeInvalidArgument, "give capsule_internet (true, false or null), isolation, on_timeout or auto_resume"))
		return
	}
	var v *bool
	if ok {
		if err := json.Unmarshal(raw, &v); err != nil {
			a.writeError(w, r, errorf(CodeInvalidArgument, "capsule_internet must be true, false or null"))
			return
		}
	}
	var iso string
	if okIso {
		if err := json.Unmarshal(rawIso, &iso); err != nil {
			a.writeError(w, r, errorf(CodeInvalidArgument, "isolation must be a string (\"\" clears it)"))
			return
		}
		if err := capsules.CheckIsolation(iso); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	var lc store.LifecycleDefaults
	if okOnTimeout {
		if err := json.Unmarshal(rawOnTimeout, &lc.OnTimeout); err != nil {
			a.writeError(w, r, errorf(CodeInvalidArgument, "on_timeout must be \"kill\", \"pause\" or null"))
			return
		}
		if lc.OnTimeout != nil {
			if err := capsules.ValidOnTimeout(*lc.OnTimeout); err != nil {
				a.writeError(w, r, err)
				return
			}
		}
	}
	if okAutoResume {
		if err := json.Unmarshal(rawAutoResume, &lc.AutoResume); err != nil {
			a.writeError(w, r, errorf(CodeInvalidArgument, "auto_resume must be true, false or null"))
			return
		}
	}
	id := chi.URLParam(r, "templateID")
	if err := validID(store.PrefixTemplate, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	p := caller(r.Context())
	t, err := a.cfg.Store.GetTemplate(r.Context(), p.TeamID, id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if t.TeamID != p.TeamID {
		a.writeError(w, r, errorf(CodePermissionDenied, "template %q is public: only its own team changes it", id))
		return
	}
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "changing a template needs the admin role in the team"))
		return
	}
	if ok {
		err = a.cfg.Store.SetTemplateCapsuleInternet(context.WithoutCancel(r.Context()), p.TeamID, id, v)
		a.audit(r, p.TeamID, "template", id, "set_capsule_internet", err, map[string]any{"capsule_internet": v})
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		t.CapsuleInternet = v
	}
	if okIso {
		err = a.cfg.Store.SetTemplateIsolation(context.WithoutCancel(r.Context()), p.TeamID, id, iso)
		a.audit(r, p.TeamID, "template", id, "set_isolation", err, map[string]any{"isolation": iso})
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		t.Isolation = iso
	}
	if okOnTimeout || okAutoResume {
		// A field not given keeps its value.
		if !okOnTimeout {
			lc.OnTimeout = t.Lifecycle.OnTimeout
		}
		if !okAutoResume {
			lc.AutoResume = t.Lifecycle.AutoResume
		}
		err = a.cfg.Store.SetTemplateLifecycle(context.WithoutCancel(r.Context()), p.TeamID, id, lc)
		a.audit(r, p.TeamID, "template", id, "set_lifecycle", err, map[string]any{"on_timeout": lc.OnTimeout, "auto_resume": lc.AutoResume})
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		t.Lifecycle = lc
	}
	writeJSON(w, http.StatusOK, toTemplateJSON(t))
}
