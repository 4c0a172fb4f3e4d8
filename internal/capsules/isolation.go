package capsules

import (
	"errors"
	"fmt"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// CheckIsolation validates an isolation name a caller gives (a create, a
// template's or a team's default); "" is valid where it means "not set".
func CheckIsolation(name string) error {
	if name == "" || runtime.ValidIsolation(name) {
		return nil
	}
	return errorf(KindInvalid, "isolation %q is not one of %s", clip(name), strings.Join(runtime.KnownIsolations, ", "))
}

// ResolveIsolation is the isolation of a new capsule: the first set of the
// create's, the template's, the team's default and the platform's
// (--default-isolation, "container" when empty). Only the create's name is
// checked here: the others were checked when they were set.
func ResolveIsolation(req string, tmpl store.Template, team store.Team, platform string) (string, error) {
	if err := CheckIsolation(req); err != nil {
		return "", err
	}
	for _, v := range []string{req, tmpl.Isolation, team.DefaultIsolation, platform} {
		if v != "" {
			return v, nil
		}
	}
	return runtime.IsolationContainer, nil
}

// isolationError turns the scheduler's "no host runs it" into a service
// error naming what the fleet lacks.
func isolationError(err error) error {
	var ie *scheduler.IsolationError
	if !errors.As(err, &ie) {
		return err
	}
	msg := fmt.Sprintf("no host available to this team runs isolation %q", ie.Isolation)
	if len(ie.Reasons) > 0 {
		msg += ": " + strings.Join(ie.Reasons, "; ")
	}
	if len(ie.Available) > 0 {
		msg += " (available: " + strings.Join(ie.Available, ", ") + ")"
	}
	return &Error{Kind: KindIsolationUnavailable, Message: clip(msg), Err: err}
}
