package api

import (
	"net/http"

	"github.com/wrenn-dev/wrenn/internal/capsules"
)

// TeamScope authenticates r from its headers (X-API-Key or Authorization:
// Bearer) the way every team route does and returns the caller's capsule
// scope. It is for foreign API layers mounted next to the API (the
// E2B-compatible routes, internal/e2b); errors are *Error.
func (a *API) TeamScope(r *http.Request) (capsules.Scope, error) {
	p, err := a.authenticate(r.Context(), credential(r))
	if err != nil {
		return capsules.Scope{}, err
	}
	if p.TeamID == "" || p.Role == "" {
		return capsules.Scope{}, errorf(CodePermissionDenied, "you are not a member of the current team")
	}
	return capsules.TeamScope(p.TeamID, p.UserID, actor(p)), nil
}

// Status maps any error the API or the capsule service returns to its
// HTTP status, its code and a message safe to show (internal errors say
// only "internal error"), the same mapping writeError uses.
func Status(err error) (status int, code, message string) {
	e := toAPIError(err)
	status = httpStatus(e.Code)
	if e.Code == CodeInternal {
		return status, e.Code, "internal error"
	}
	return status, e.Code, e.Message
}
