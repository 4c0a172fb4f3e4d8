package api

// Small routes the dashboard needs (issue 17): what the sign-in page may
// offer, and the caller's own display name (the name dialog after a
// GitHub sign-up).

import (
	"net/http"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// authOptions answers GET /v1/auth/options (no credential): whether email
// and GitHub sign-up/sign-in are on, and where the port proxy listens.
func (a *API) authOptions(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, wrennapi.AuthOptions{
		Signup: !a.cfg.DisableSignup, GitHub: a.cfg.GitHub != nil,
		ProxyPort: a.cfg.ProxyPort, ProxyDomain: a.cfg.ProxyDomain,
	})
}

// updateMe answers PATCH /v1/me: the caller changes their display name.
func (a *API) updateMe(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.UpdateMe
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	p := caller(r.Context())
	if p.UserID == "" {
		a.writeError(w, r, errorf(CodePermissionDenied, "only a user has a display name"))
		return
	}
	name, err := validName("name", req.Name, 100)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.SetUserName(r.Context(), p.UserID, name); err != nil {
		a.writeError(w, r, err)
		return
	}
	p.User.Name = name // this request's principal: me answers with the new name
	a.me(w, r)
}
