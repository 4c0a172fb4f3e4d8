// Package hostlink is the host side of the control plane's host protocol:
// register once with a one-time token (receiving the host ID and its
// credential), then heartbeat with that credential at the interval the
// control plane asks for. The credential is also the secret the host
// agent must require from the control plane (hostagent.Config.Secret).
package hostlink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Usage is what a host reports. DiskMB is the free space of the
// filesystem holding capsule disks (not its size). The overcommit ratios
// are the agent's configuration (0: the control plane's defaults).
type Usage struct {
	Address          string        `json:"address,omitempty"`
	VCPUs            int64         `json:"vcpus"`
	MemoryMB         int64         `json:"memory_mb"`
	DiskMB           int64         `json:"disk_mb"`
	UsedVCPUs        int64         `json:"used_vcpus"`
	UsedMemoryMB     int64         `json:"used_memory_mb"`
	UsedDiskMB       int64         `json:"used_disk_mb"`
	CPUOvercommit    float64       `json:"cpu_overcommit,omitempty"`
	MemoryOvercommit float64       `json:"memory_overcommit,omitempty"`
	DiskOvercommit   float64       `json:"disk_overcommit,omitempty"`
	Capabilities     *Capabilities `json:"capabilities,omitempty"`
}

// Capabilities is what a host can do, reported with every heartbeat.
type Capabilities struct {
	// Runtimes are the runtime drivers the agent runs (e.g. "container").
	Runtimes []string `json:"runtimes"`
	// Isolations are the isolations the host runs (container, gvisor,
	// microvm). Agents older than isolation selection report "runc" for
	// container; Supports reads both.
	Isolations []string `json:"isolations"`
	// IsolationSupport is every isolation the agent knows, available or
	// not with the reason (empty from older agents).
	IsolationSupport []IsolationSupport `json:"isolation_support,omitempty"`
	// DefaultIsolation is the agent's isolation of a create naming none.
	DefaultIsolation string `json:"default_isolation,omitempty"`
	// MemorySnapshots: pause to disk keeps process memory (CRIU). When
	// false, MemorySnapshotsReason says why.
	MemorySnapshots       bool   `json:"memory_snapshots"`
	MemorySnapshotsReason string `json:"memory_snapshots_reason,omitempty"`
	// StartedAt is when the agent process started: a change tells the
	// control plane the agent restarted, so creates it had in flight are
	// gone.
	StartedAt time.Time `json:"started_at,omitzero"`
	// WarmPools are the host's warm pools (docs/PERFORMANCE.md).
	WarmPools []WarmPool `json:"warm_pools,omitempty"`
}

// WarmPool is one template's warm pool on a host: started, frozen
// capsules that creates take instead of booting.
type WarmPool struct {
	Template string `json:"template"`
	Ready    int    `json:"ready"`
	Target   int    `json:"target"`
	Auto     bool   `json:"auto"`
	Max      int    `json:"max"`
	Hits     uint64 `json:"hits"`
	Misses   uint64 `json:"misses"`
	Limit    string `json:"limit,omitempty"`
}

// IsolationSupport is whether a host runs one isolation and why not.
type IsolationSupport struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// KVM and Backend describe the microvm isolation: whether its VMs use
	// KVM, and the VMM (qemu, firecracker).
	KVM     bool   `json:"kvm,omitempty"`
	Backend string `json:"backend,omitempty"`
}

// legacyIsolation maps what agents older than isolation selection put in
// Isolations to an isolation name.
func legacyIsolation(s string) string {
	if s == "runc" {
		return "container"
	}
	return s
}

// Supports reports whether the host runs isolation and, when it does not,
// why. A host that reports no isolations at all (an agent from before
// capabilities) runs containers only.
func (c Capabilities) Supports(isolation string) (bool, string) {
	for _, is := range c.IsolationSupport {
		if is.Name == isolation {
			return is.Available, is.Reason
		}
	}
	if len(c.IsolationSupport) > 0 {
		return false, "the host's agent does not know this isolation"
	}
	if len(c.Isolations) == 0 {
		return isolation == "container", "the host runs containers only"
	}
	for _, s := range c.Isolations {
		if legacyIsolation(s) == isolation {
			return true, ""
		}
	}
	return false, "the host does not offer it"
}

// Available lists the isolations the host runs (see Supports).
func (c Capabilities) Available() []string {
	var out []string
	if len(c.IsolationSupport) > 0 {
		for _, is := range c.IsolationSupport {
			if is.Available {
				out = append(out, is.Name)
			}
		}
		return out
	}
	if len(c.Isolations) == 0 {
		return []string{"container"}
	}
	for _, s := range c.Isolations {
		out = append(out, legacyIsolation(s))
	}
	return out
}

// Registration is what the control plane returns on register.
type Registration struct {
	HostID               string `json:"host_id"`
	Credential           string `json:"credential"`
	HeartbeatIntervalSec int    `json:"heartbeat_interval_sec"`
}

// Client talks to one control plane.
type Client struct {
	BaseURL string
	HTTP    *http.Client
	// OnStatus, when set, receives the host's status from every heartbeat
	// answer ("draining" while an admin drains the host).
	OnStatus func(status string)
}

func (c *Client) post(ctx context.Context, path, bearer string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.BaseURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, out)
}

// Register consumes token and returns the host's identity.
func (c *Client) Register(ctx context.Context, token string, u Usage) (Registration, error) {
	var out Registration
	in := struct {
		Token string `json:"token"`
		Usage
	}{token, u}
	if err := c.post(ctx, "/v1/hosts/register", "", in, &out); err != nil {
		return Registration{}, fmt.Errorf("hostlink: register: %w", err)
	}
	return out, nil
}

// Heartbeat reports usage once and returns the interval to use next. The
// host's status in the answer (online, draining) goes to OnStatus.
func (c *Client) Heartbeat(ctx context.Context, hostID, credential string, u Usage) (time.Duration, error) {
	var out struct {
		Status               string `json:"status"`
		HeartbeatIntervalSec int    `json:"heartbeat_interval_sec"`
	}
	if err := c.post(ctx, "/v1/hosts/"+hostID+"/heartbeat", credential, u, &out); err != nil {
		return 0, fmt.Errorf("hostlink: heartbeat: %w", err)
	}
	if c.OnStatus != nil && out.Status != "" {
		c.OnStatus(out.Status)
	}
	return time.Duration(out.HeartbeatIntervalSec) * time.Second, nil
}

// Run heartbeats until ctx ends, reading usage from usage before each
// beat. Failures are logged and retried sooner than the next tick (after
// at most 5 s), so a host is back as soon as its control plane is.
func (c *Client) Run(ctx context.Context, hostID, credential string, interval time.Duration, usage func(context.Context) (Usage, error), log *slog.Logger) {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	for {
		u, err := usage(ctx)
		if err == nil {
			var next time.Duration
			next, err = c.Heartbeat(ctx, hostID, credential, u)
			if err == nil && next > 0 {
				interval = next
			}
		}
		wait := interval
		if err != nil && ctx.Err() == nil {
			log.Warn("heartbeat failed", "host_id", hostID, "err", err)
			wait = min(interval, 5*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
