package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
)

// instanceRe is what --instance accepts: it names cgroups, an nftables
// table and network namespaces, so it stays short and plain.
var instanceRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// joinFlags are `wrenn agent`'s flags for joining a control plane: the
// agent registers itself once with a one-time token and then heartbeats,
// so a host is added with one command.
type joinFlags struct {
	controlPlane string
	tokenFile    string
	advertise    string
	caFile       string
}

func (j *joinFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&j.controlPlane, "control-plane", "", "URL of the control plane to join (register once, then heartbeat); the host secret becomes the credential it issues")
	fl.StringVar(&j.tokenFile, "join-token-file", "", "file holding the one-time host registration token (POST /v1/admin/hosts/tokens); needed only for the first start ($WRENN_JOIN_TOKEN)")
	fl.StringVar(&j.advertise, "advertise-address", "", "address (host:port, or https://host:port with --tls-cert) the control plane reaches this agent at (default: --listen when it names an IP)")
	fl.StringVar(&j.caFile, "control-plane-ca", "", "CA (PEM) the control plane's certificate must chain to (https URLs with a private CA)")
}

// joinState is what registration returned, kept in the agent's state
// directory so a restart heartbeats as the same host (the token is
// one-time).
type joinState struct {
	ControlPlane string `json:"control_plane"`
	HostID       string `json:"host_id"`
	Credential   string `json:"credential"`
	Address      string `json:"address"`
	// HeartbeatSec is the interval the control plane asked for (each
	// heartbeat's answer may change it).
	HeartbeatSec int `json:"heartbeat_interval_sec,omitempty"`

	client *hostlink.Client
}

const joinFile = "control-plane.json"

// register returns this agent's registration: the saved one, or a new one
// made with the join token.
func (j *joinFlags) join(ctx context.Context, stateDir, listen string, log *slog.Logger) (*joinState, error) {
	addr, err := advertiseAddress(j.advertise, listen)
	if err != nil {
		return nil, err
	}
	hc, err := j.httpClient()
	if err != nil {
		return nil, err
	}
	client := &hostlink.Client{BaseURL: strings.TrimSuffix(j.controlPlane, "/"), HTTP: hc}
	path := filepath.Join(stateDir, joinFile)
	if b, err := os.ReadFile(path); err == nil {
		var st joinState
		if err := json.Unmarshal(b, &st); err != nil || st.HostID == "" || st.Credential == "" {
			return nil, fmt.Errorf("%s is damaged (%w): delete it and join again with a new token", path, err)
		}
		if st.ControlPlane != client.BaseURL {
			return nil, fmt.Errorf("this agent joined %s (%s); to join %s, delete that file and use a new token", st.ControlPlane, path, client.BaseURL)
		}
		st.Address, st.client = addr, client
		log.Info("joined control plane", "url", st.ControlPlane, "host_id", st.HostID)
		return &st, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	token := os.Getenv("WRENN_JOIN_TOKEN")
	if j.tokenFile != "" {
		b, err := os.ReadFile(j.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--join-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, errors.New("--control-plane: first start needs a registration token (--join-token-file or WRENN_JOIN_TOKEN; a platform admin makes one with POST /v1/admin/hosts/tokens or the dashboard)")
	}
	u, err := bootUsage(stateDir, addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reg, err := client.Register(rctx, token, u)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", client.BaseURL, err)
	}
	st := &joinState{ControlPlane: client.BaseURL, HostID: reg.HostID, Credential: reg.Credential, Address: addr, HeartbeatSec: reg.HeartbeatIntervalSec, client: client}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	log.Info("registered with control plane", "url", st.ControlPlane, "host_id", st.HostID, "address", addr)
	return st, nil
}

// heartbeat reports the agent's load until ctx ends.
func (st *joinState) heartbeat(ctx context.Context, a *hostagent.Agent, f agentFlags, log *slog.Logger) {
	usage := func(context.Context) (hostlink.Usage, error) {
		l := a.Load()
		reason := l.MemorySnapshotsReason
		return hostlink.Usage{
			Address:          st.Address,
			VCPUs:            int64(l.CPUs),
			MemoryMB:         int64(l.MemoryTotalBytes >> 20), //nolint:gosec // RAM sizes fit in int64
			DiskMB:           int64(l.DiskFreeBytes >> 20),    //nolint:gosec // disk sizes fit in int64
			UsedVCPUs:        l.UsedVCPUs,
			UsedMemoryMB:     l.UsedMemoryMB,
			UsedDiskMB:       l.UsedDiskMB,
			CPUOvercommit:    f.overcommit.o.CPU,
			MemoryOvercommit: f.overcommit.o.Memory,
			DiskOvercommit:   f.overcommit.o.Disk,
			Capabilities:     agentCapabilities(l, reason),
		}, nil
	}
	// A draining host's warm-pool capsules are discarded (and its pools
	// kept empty until it is undrained).
	st.client.OnStatus = func(status string) { a.SetDraining(status == "draining") }
	st.client.Run(ctx, st.HostID, st.Credential, time.Duration(st.HeartbeatSec)*time.Second, usage, log)
}

// bootUsage is the capacity reported at registration (nothing placed yet).
func bootUsage(stateDir, addr string) (hostlink.Usage, error) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return hostlink.Usage{}, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return hostlink.Usage{}, err
	}
	var sf syscall.Statfs_t
	if err := syscall.Statfs(stateDir, &sf); err != nil {
		return hostlink.Usage{}, err
	}
	return hostlink.Usage{
		Address:  addr,
		VCPUs:    int64(goruntime.NumCPU()),
		MemoryMB: int64(si.Totalram*uint64(si.Unit)) >> 20, //nolint:gosec // RAM sizes fit in int64
		DiskMB:   int64(sf.Bavail*uint64(sf.Bsize)) >> 20,  //nolint:gosec // disk sizes fit in int64
	}, nil
}

// advertiseAddress is where the control plane reaches the agent: the flag,
// or --listen when it names an IP (":50051" names none: the control plane
// could not know which of the host's addresses to use).
func advertiseAddress(flag, listen string) (string, error) {
	if flag != "" {
		a := strings.TrimPrefix(strings.TrimPrefix(flag, "https://"), "http://")
		if _, _, err := net.SplitHostPort(a); err != nil {
			return "", fmt.Errorf("--advertise-address %q: want host:port: %w", flag, err)
		}
		return flag, nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return "", fmt.Errorf("--control-plane: set --advertise-address (host:port the control plane reaches this agent at); --listen %q names no single address", listen)
	}
	return listen, nil
}

func (j *joinFlags) httpClient() (*http.Client, error) {
	tr := &http.Transport{Proxy: nil, IdleConnTimeout: 90 * time.Second}
	if j.caFile != "" {
		pem, err := os.ReadFile(j.caFile)
		if err != nil {
			return nil, fmt.Errorf("--control-plane-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--control-plane-ca %s: no PEM certificate in it", j.caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// agentCapabilities is what a joined agent reports it can do.
func agentCapabilities(l hostagent.Load, reason string) *hostlink.Capabilities {
	c := &hostlink.Capabilities{
		Runtimes: []string{"container"}, DefaultIsolation: l.DefaultIsolation,
		MemorySnapshots: l.MemorySnapshots, MemorySnapshotsReason: reason, StartedAt: l.StartedAt,
	}
	for _, st := range l.Isolations {
		c.IsolationSupport = append(c.IsolationSupport, hostlink.IsolationSupport{
			Name: st.Name, Available: st.Available, Reason: st.Reason, KVM: st.KVM, Backend: st.Backend,
		})
	}
	c.Isolations = c.Available()
	return c
}
