package api

import (
	"errors"
	"net/http"

	"github.com/wrenn-dev/wrenn/internal/usage"
)

// capsuleUsage answers GET /v1/capsules/usage?from=YYYY-MM-DD&to=YYYY-MM-DD.
func (a *API) capsuleUsage(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Usage == nil {
		a.writeError(w, r, errorf(CodeNotImplemented, "usage metering is not enabled on this server"))
		return
	}
	q := r.URL.Query()
	from, to, err := usage.ParseRange(q.Get("from"), q.Get("to"))
	if errors.Is(err, usage.ErrBadRange) {
		a.writeError(w, r, &Error{Code: CodeInvalidArgument, Message: err.Error()})
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	rep, err := a.cfg.Usage.Query(r.Context(), caller(r.Context()).TeamID, from, to)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
