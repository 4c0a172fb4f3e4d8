package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
)

// fcClient speaks Firecracker's HTTP API (src/firecracker/swagger/
// firecracker.yaml) over its Unix socket. Every call takes its own context:
// there is no client-wide timeout, because a snapshot of a large guest may
// take long and only the caller knows how long it may wait.
type fcClient struct {
	sock string
	http *http.Client
}

func newFCClient(sock string) *fcClient {
	return &fcClient{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
		MaxIdleConns:       1,
		Proxy:              nil,
	}}}
}

// FirecrackerError is an API call Firecracker refused: its status and
// fault_message.
type FirecrackerError struct {
	Method, Path string
	Status       int
	Fault        string
}

func (e *FirecrackerError) Error() string {
	return fmt.Sprintf("firecracker: %s %s: %d %s", e.Method, e.Path, e.Status, e.Fault)
}

// do sends body (nil: none) and decodes a 200 answer into out (nil: none).
func (c *fcClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var f struct {
			Fault string `json:"fault_message"`
		}
		if json.Unmarshal(b, &f) != nil || f.Fault == "" {
			f.Fault = string(bytes.TrimSpace(b))
		}
		return &FirecrackerError{Method: method, Path: path, Status: resp.StatusCode, Fault: f.Fault}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("firecracker: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func (c *fcClient) close() { c.http.CloseIdleConnections() }

// The request and answer bodies the backend uses.

type fcMachineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

type fcBootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

type fcDrive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
	IOEngine     string `json:"io_engine,omitempty"`
}

// TokenBucket is one of a Firecracker rate limiter's buckets: Size tokens
// (bytes or operations) refilled every RefillTimeMs, plus a one-time burst.
type TokenBucket struct {
	Size         int64 `json:"size"`
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
	RefillTimeMs int64 `json:"refill_time"`
}

type fcRateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
}

type fcNetIface struct {
	IfaceID       string         `json:"iface_id"`
	HostDevName   string         `json:"host_dev_name"`
	GuestMAC      string         `json:"guest_mac,omitempty"`
	TxRateLimiter *fcRateLimiter `json:"tx_rate_limiter,omitempty"`
}

type fcVsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

type fcBalloon struct {
	AmountMiB             int  `json:"amount_mib"`
	DeflateOnOOM          bool `json:"deflate_on_oom"`
	StatsPollingIntervalS int  `json:"stats_polling_interval_s"`
}

type fcBalloonStats struct {
	ActualMiB       int64  `json:"actual_mib"`
	TargetMiB       int64  `json:"target_mib"`
	FreeMemory      *int64 `json:"free_memory"`
	TotalMemory     *int64 `json:"total_memory"`
	AvailableMemory *int64 `json:"available_memory"`
}

type fcMmdsConfig struct {
	NetworkInterfaces []string `json:"network_interfaces"`
	Version           string   `json:"version"`
}

type fcSnapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type"`
}

type fcMemBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type fcSnapshotLoad struct {
	SnapshotPath    string       `json:"snapshot_path"`
	MemBackend      fcMemBackend `json:"mem_backend"`
	TrackDirtyPages bool         `json:"track_dirty_pages"`
	ResumeVM        bool         `json:"resume_vm"`
}

type fcInstanceInfo struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	VMMVersion  string `json:"vmm_version"`
	AppName     string `json:"app_name"`
	StartedFrom string `json:"-"`
}

func (c *fcClient) put(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPut, path, body, nil)
}

func (c *fcClient) patch(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPatch, path, body, nil)
}

func (c *fcClient) info(ctx context.Context) (fcInstanceInfo, error) {
	var i fcInstanceInfo
	return i, c.do(ctx, http.MethodGet, "/", nil, &i)
}

func (c *fcClient) setState(ctx context.Context, state string) error {
	return c.patch(ctx, "/vm", map[string]string{"state": state})
}

func (c *fcClient) action(ctx context.Context, typ string) error {
	return c.put(ctx, "/actions", map[string]string{"action_type": typ})
}
