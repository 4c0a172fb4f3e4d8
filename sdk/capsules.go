package wrenn

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Capsule states.
const (
	StatusPending    = "pending"
	StatusStarting   = "starting"
	StatusRunning    = "running"
	StatusPaused     = "paused"
	StatusHibernated = "hibernated"
	StatusStopped    = "stopped"
	StatusError      = "error"
	StatusMissing    = "missing"
)

// Capsule is a sandbox as the API describes it (the Capsule schema of the
// API's OpenAPI document; the type is generated, see package wrennapi).
// AccessToken opens the capsule's ports through the port proxy; only
// Create returns it. MemoryKept is set by Pause and Resume only: whether
// the capsule's processes and memory were kept. A pause to disk on a host
// without a working CRIU keeps files only, and the capsule boots again on
// resume.
type Capsule = wrennapi.Capsule

// CreateParams describe a new capsule. Zero fields take the server's
// defaults (template "base", 1 vCPU, 512 MB memory, 5120 MB disk, 300 s
// timeout, internet on).
type CreateParams struct {
	Template   string
	VCPUs      int64
	MemoryMB   int64
	DiskSizeMB int64
	Timeout    time.Duration
	Env        map[string]string
	Public     bool
	// NoInternet creates the capsule without outbound internet access.
	// Unset, the capsule gets its team's default (on unless a team admin
	// turned it off).
	NoInternet bool
	// Network is the egress policy and rate limits (nil: every public
	// destination, the default rates). See Network.
	Network *Network
	// Isolation is how to isolate the capsule: IsolationContainer,
	// IsolationGVisor or IsolationMicroVM ("": the template's default,
	// else the team's, else the platform's). One no host of the team runs
	// is an *Error with Code "isolation_unavailable" (HTTP 422).
	Isolation string
	// OnTimeout is what the end of the timeout does: OnTimeoutKill or
	// OnTimeoutPause (to disk, with memory where the host keeps it); ""
	// takes the template's default, else the team's, else kill.
	OnTimeout string
	// AutoResume, when set, says whether any use of the paused capsule
	// (exec, files, processes, the port proxy) resumes it first; nil takes
	// the template's default, else the team's, else false.
	AutoResume *bool
	// VolumeMounts mounts the team's volumes (docs/VOLUMES.md; container
	// isolation only, else an *Error with Code "volumes_unsupported").
	VolumeMounts []VolumeMount
}

// What the end of a capsule's timeout does (CreateParams.OnTimeout).
const (
	OnTimeoutKill  = "kill"
	OnTimeoutPause = "pause"
)

// Network is a capsule's egress policy and rate limits (the API's
// CapsuleNetwork schema; docs/NETWORK.md). AllowOut and DenyOut hold IPv4
// CIDRs, single addresses and domain names ("*.example.com" for every name
// below example.com); an allow rule wins over a deny rule, and
// DenyOut: []string{"0.0.0.0/0"} with AllowOut is an allow-list. Rates are
// megabytes per second, the burst megabytes (0: the defaults, 200 MB/s and
// 100 MB). At most 1,000 rules; the host, other capsules, link-local and
// private ranges stay unreachable whatever the policy.
type Network = wrennapi.CapsuleNetwork

func optInt(v int64) *int64 {
	if v == 0 {
		return nil
	}
	return &v
}

// timeoutSec rounds d up to whole seconds (0 stays 0).
func timeoutSec(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// Create starts a capsule and returns it once it runs.
func (c *Client) Create(ctx context.Context, p CreateParams) (*Capsule, error) {
	body := wrennapi.CreateCapsule{
		VCPUs: optInt(p.VCPUs), MemoryMB: optInt(p.MemoryMB), DiskSizeMB: optInt(p.DiskSizeMB),
		TimeoutSec: optInt(timeoutSec(p.Timeout)), Env: p.Env, Public: p.Public, Network: p.Network,
		Isolation: p.Isolation, VolumeMounts: p.VolumeMounts,
	}
	if p.NoInternet {
		off := false
		body.AllowInternet = &off
	}
	if p.Template != "" {
		body.Template = &p.Template
	}
	if p.OnTimeout != "" {
		body.OnTimeout = &p.OnTimeout
	}
	body.AutoResume = p.AutoResume
	var out Capsule
	if err := c.call(ctx, http.MethodPost, "/v1/capsules", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ForkResult is a fork's answer: the copies (each with its AccessToken),
// the base template they share and whether they run the original's
// processes.
type ForkResult = wrennapi.ForkResult

// Fork makes count (1 to 20) copies of a running or paused capsule: its
// files and, where its host keeps memory, its running processes. Each
// copy has its own id, network and disk; the original keeps running.
func (c *Client) Fork(ctx context.Context, id string, count int) (*ForkResult, error) {
	n := int64(count)
	var out ForkResult
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/fork", nil, wrennapi.Fork{Count: &n}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Get returns one capsule.
func (c *Client) Get(ctx context.Context, id string) (*Capsule, error) {
	var out Capsule
	if err := c.call(ctx, http.MethodGet, "/v1/capsules/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListOptions page through capsules, newest first.
type ListOptions struct {
	// Status filters by state ("" for all).
	Status string
	// Limit is the page size (server default 100, at most 1000).
	Limit int
	// Cursor continues after a previous page's NextCursor.
	Cursor string
}

// CapsulePage is one page of capsules (NextCursor is empty on the last).
type CapsulePage = wrennapi.CapsuleList

// ListPage returns one page of the team's capsules.
func (c *Client) ListPage(ctx context.Context, o ListOptions) (*CapsulePage, error) {
	q := url.Values{}
	if o.Status != "" {
		q.Set("status", o.Status)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	var out CapsulePage
	if err := c.call(ctx, http.MethodGet, "/v1/capsules", q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// List returns all of the team's capsules (every page), optionally only
// those in status.
func (c *Client) List(ctx context.Context, status string) ([]Capsule, error) {
	var all []Capsule
	o := ListOptions{Status: status, Limit: 1000}
	for {
		p, err := c.ListPage(ctx, o)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Capsules...)
		if p.NextCursor == "" {
			return all, nil
		}
		o.Cursor = p.NextCursor
	}
}

// Delete destroys a capsule and forgets it.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/v1/capsules/"+url.PathEscape(id), nil, nil, nil)
}

// Kill destroys a capsule; it is Delete under the name other sandbox SDKs use.
func (c *Client) Kill(ctx context.Context, id string) error { return c.Delete(ctx, id) }

// PauseOptions tune Pause.
type PauseOptions struct {
	// ToDisk writes the capsule to the snapshot store and frees its memory
	// (state "hibernated") instead of freezing it in place ("paused").
	ToDisk bool
}

// Pause freezes a running capsule.
func (c *Client) Pause(ctx context.Context, id string, o PauseOptions) (*Capsule, error) {
	var out Capsule
	body := wrennapi.Pause{ToDisk: o.ToDisk}
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/pause", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Resume continues a paused capsule. A non-zero timeout replaces its time
// to live.
func (c *Client) Resume(ctx context.Context, id string, timeout time.Duration) (*Capsule, error) {
	var out Capsule
	body := wrennapi.Resume{TimeoutSec: optInt(timeoutSec(timeout))}
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/resume", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetTimeout sets a running capsule's time to live, counted from now.
func (c *Client) SetTimeout(ctx context.Context, id string, timeout time.Duration) (*Capsule, error) {
	var out Capsule
	sec := timeoutSec(timeout)
	body := wrennapi.SetTimeout{TimeoutSec: &sec}
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/timeout", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// NetworkUpdate is a capsule's new egress policy for SetNetwork.
type NetworkUpdate struct {
	// AllowInternet, when set, switches outbound internet on or off; nil
	// keeps it.
	AllowInternet *bool
	// Network replaces the policy; nil (or a zero value) clears it to the
	// defaults.
	Network *Network
}

// SetNetwork replaces a running or paused capsule's egress policy and
// rate limits, live: established connections keep flowing. An invalid
// policy is an error naming the rule, and the old policy stays in force.
func (c *Client) SetNetwork(ctx context.Context, id string, u NetworkUpdate) (*Capsule, error) {
	body := wrennapi.SetCapsuleNetwork{AllowInternet: u.AllowInternet}
	if n := u.Network; n != nil {
		body.AllowOut, body.DenyOut = n.AllowOut, n.DenyOut
		body.EgressMbps, body.IngressMbps, body.BurstMB = n.EgressMbps, n.IngressMbps, n.BurstMB
	}
	var out Capsule
	if err := c.call(ctx, http.MethodPut, "/v1/capsules/"+url.PathEscape(id)+"/network", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Template is a capsule image.
type Template = wrennapi.Template

// Templates lists the templates the team can use (its own and public ones).
func (c *Client) Templates(ctx context.Context) ([]Template, error) {
	var out wrennapi.TemplateList
	if err := c.call(ctx, http.MethodGet, "/v1/templates", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Templates, nil
}

// SnapshotOptions tune Snapshot.
type SnapshotOptions struct {
	// FilesOnly keeps the files only; by default the capsule's processes'
	// memory is kept too where its host can (capsules created from the
	// template then start with those processes running).
	FilesOnly bool
}

// SnapshotTemplate is a template made from a capsule; MemoryReason says why
// memory was not kept when it was asked for.
type SnapshotTemplate = wrennapi.SnapshotTemplate

// Snapshot turns a running capsule into a team template called name
// ("name" or "name:tag"). The capsule keeps running (it is frozen briefly
// for the copy). Create capsules from the template by its name or id.
func (c *Client) Snapshot(ctx context.Context, id, name string, o SnapshotOptions) (*SnapshotTemplate, error) {
	var out SnapshotTemplate
	memory := !o.FilesOnly
	body := wrennapi.CapsuleSnapshot{Name: name, Memory: &memory}
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/snapshot", nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteTemplate deletes one of the team's own templates by id. Capsules
// that use it keep running; no new capsule can be created from it.
func (c *Client) DeleteTemplate(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/v1/templates/"+url.PathEscape(id), nil, nil, nil)
}
