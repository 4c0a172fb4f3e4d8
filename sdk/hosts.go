package wrenn

import (
	"context"
	"net/http"
	"net/url"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Host is a host as platform admins see it; Drain is set while it drains
// or once it is drained.
type Host = wrennapi.Host

// Host returns one host (platform admins).
func (c *Client) Host(ctx context.Context, id string) (*Host, error) {
	var out Host
	if err := c.call(ctx, http.MethodGet, "/v1/admin/hosts/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DrainHost starts draining a host (platform admins): no new capsules are
// placed on it and every capsule on it moves to other hosts in the
// background (running ones keep running). Poll Host for the progress
// (Host.Drain: state draining, then drained; the capsules left and why).
func (c *Client) DrainHost(ctx context.Context, id string) (*Host, error) {
	var out Host
	if err := c.call(ctx, http.MethodPost, "/v1/admin/hosts/"+url.PathEscape(id)+"/drain", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UndrainHost makes a draining or drained host take capsules again
// (platform admins); capsules already moved stay where they are.
func (c *Client) UndrainHost(ctx context.Context, id string) (*Host, error) {
	var out Host
	if err := c.call(ctx, http.MethodPost, "/v1/admin/hosts/"+url.PathEscape(id)+"/undrain", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
