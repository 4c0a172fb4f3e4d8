package api

import (
	"errors"
	"net/http"

	"github.com/wrenn-dev/wrenn/internal/usage"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
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
	out := wrennapi.Usage{
		From: rep.From, To: rep.To, Days: make([]wrennapi.UsageDay, 0, len(rep.Days)),
		Totals: wrennapi.UsageTotals{CPUMinutes: rep.Totals.CPUMinutes, RAMMBMinutes: rep.Totals.RAMMBMinutes},
	}
	for _, d := range rep.Days {
		out.Days = append(out.Days, wrennapi.UsageDay{Date: d.Date, CPUMinutes: d.CPUMinutes, RAMMBMinutes: d.RAMMBMinutes, Live: d.Live})
	}
	writeJSON(w, http.StatusOK, out)
}
