package wrenn

import (
	"context"
	"net/http"
	"net/url"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Isolations: how a capsule is separated from its host and from other
// capsules (docs/API.md "Isolation").
const (
	// IsolationContainer: runc (namespaces, cgroups, seccomp, a user
	// namespace); the platform default unless the operator changed it.
	IsolationContainer = "container"
	// IsolationGVisor: gVisor's user-space kernel between the capsule and
	// the host.
	IsolationGVisor = "gvisor"
	// IsolationMicroVM: the capsule's own kernel in a virtual machine.
	IsolationMicroVM = "microvm"
)

// CodeIsolationUnavailable is the Error.Code of a create whose isolation
// no host of the team runs (HTTP 422; the message names what the hosts
// lack and what they run).
const CodeIsolationUnavailable = "isolation_unavailable"

// SetTemplateIsolation sets the default isolation of capsules created from
// one of the team's templates ("" clears it: the team's default applies).
// Needs the admin role in the team.
func (c *Client) SetTemplateIsolation(ctx context.Context, templateID, isolation string) (*Template, error) {
	var out Template
	body := wrennapi.TemplateUpdate{Isolation: &isolation}
	if err := c.call(ctx, http.MethodPatch, "/v1/templates/"+url.PathEscape(templateID), nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetTeamDefaultIsolation sets the team's default isolation of new
// capsules ("" clears it: the platform's default applies). Needs the
// admin role in the team.
func (c *Client) SetTeamDefaultIsolation(ctx context.Context, teamID, isolation string) (*Team, error) {
	var out Team
	body := wrennapi.TeamUpdate{DefaultIsolation: &isolation}
	if err := c.call(ctx, http.MethodPatch, "/v1/teams/"+url.PathEscape(teamID), nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
