// Package up runs a whole single-node Wrenn in one process (`wrenn up`):
// the control plane on an embedded SQLite database, and a host agent with
// the container runtime driver, registered with that control plane as its
// only host. It owns WRENN_HOME's layout:
//
//	$WRENN_HOME/wrenn.db        SQLite store
//	$WRENN_HOME/server.secret   control plane secret (0600)
//	$WRENN_HOME/admin.key       the admin API key (0600), written once
//	$WRENN_HOME/host.json       this host's ID in the store
//	$WRENN_HOME/agent.secret    the host credential the agent requires (0600)
//	$WRENN_HOME/templates/      template rootfs trees
//	$WRENN_HOME/agent/          agent and runtime state, snapshots
//
// Invariants:
//   - The admin user and key are created once; later starts read
//     admin.key and never mint or print a new key while it still works.
//   - The "minimal" template is built and registered before Ready is
//     closed, so a capsule can be created as soon as Ready fires; "base" is
//     built in the background (debootstrap, cached machine-wide under
//     CacheDir keyed by the recipe's hash).
//   - On shutdown every capsule of this host is paused (warm, re-adopted on
//     the next start) or destroyed, according to Config.OnExit, before the
//     servers stop; with OnExit destroy the runtime's host objects
//     (nftables table, cgroup parents) are removed too.
package up

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/buildinfo"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// OnExit says what happens to capsules when `wrenn up` stops.
type OnExit string

// OnExit values.
const (
	// OnExitPause freezes running capsules; the next start re-adopts them.
	OnExitPause OnExit = "pause"
	// OnExitDestroy destroys every capsule of this host.
	OnExitDestroy OnExit = "destroy"
)

// Template names built on first start.
const (
	MinimalTemplate = "minimal"
	BaseTemplate    = "base"
)

// AdminEmail is the e-mail address of the admin user `wrenn up` creates.
const AdminEmail = controlplane.AdminEmail

// Config configures an App. Zero values take the documented defaults.
type Config struct {
	// Home is WRENN_HOME. Required.
	Home string
	// Listen is the API address (default 127.0.0.1:9725; port 0 picks one).
	Listen string
	// ProxyListen is the port proxy's own address (default
	// 127.0.0.1:9726; port 0 picks one): capsule ports are served at
	// ProxyURL()/proxy/{capsule}/{port}/…, never on the API's origin.
	ProxyListen string
	// AgentListen is the in-process agent's address (default 127.0.0.1:0).
	AgentListen string
	// OnExit default pause.
	OnExit OnExit
	// GitHub enables GitHub sign-in (zero: off); its callback is on the
	// API's URL.
	GitHub auth.GitHubConfig
	// EnvdPath is the static envd binary put into every capsule. Required.
	EnvdPath string
	// CacheDir caches base rootfs builds machine-wide (default /var/cache/wrenn).
	CacheDir string
	// BuildBase builds the "base" template in the background when missing.
	BuildBase bool
	// DebianMirror for the base template (default http://deb.debian.org/debian).
	DebianMirror string
	// Busybox is the static busybox for "minimal" (default template.BusyboxPath).
	Busybox string
	// DefaultDiskSizeMB is a capsule's writable disk when a create gives
	// none at the runtime level (default 5120).
	DefaultDiskSizeMB int
	// Instance names this Wrenn's host objects: cgroup parent /<Instance>,
	// nftables table <Instance>, network namespaces <Instance>-… (default
	// "wrenn"). Two instances on one machine need different names and
	// subnets.
	Instance string
	// Subnet capsule addresses come from (default 10.200.0.0/16).
	Subnet netip.Prefix
	// DNSUpstream are the resolvers of the capsules' DNS forwarder
	// (default: the host's, from /etc/resolv.conf).
	DNSUpstream []string
	// WarmPools keeps this many started-and-frozen capsules per template
	// (e.g. {"minimal": 2}; runtime.WarmPoolAuto: sized by demand) so
	// creates take one instead of booting. A pool starts filling once its
	// template is available. Nil: no pools (`wrenn up` passes
	// runtime.DefaultWarmPools unless --warm-pool says otherwise).
	WarmPools map[string]int
	// CRIUPath, CRIUEnv and DisableCRIU configure memory snapshots of the
	// container driver (container.Config): "" looks up criu in PATH.
	CRIUPath    string
	CRIUEnv     []string
	DisableCRIU bool
	// DisableUserNS runs capsules without user namespaces
	// (container.Config.DisableUserNS).
	DisableUserNS bool
	// ColdSpares is container.Config.ColdSpares (0: off; the CLI's
	// default is container.DefaultColdSpares).
	ColdSpares int
	// HeartbeatInterval of the in-process host (default 10 s).
	HeartbeatInterval time.Duration
	// Overcommit are the ratios this host admits capsules by, reported
	// with every heartbeat (zero fields: scheduler.DefaultOvercommit).
	Overcommit scheduler.Overcommit
	// DefaultIsolation is the platform's isolation of a capsule whose
	// create, template and team name none (default container; this host
	// must run it).
	DefaultIsolation string
	// EventRetention is how long the event log keeps events (default
	// events.DefaultRetention); WebhookAllowPrivate lets webhook URLs
	// point at loopback, private and this host's addresses (as wrenn
	// server's flags).
	EventRetention      time.Duration
	WebhookAllowPrivate bool
	// RunscPath, when set, offers gVisor isolation: a static runsc
	// (scripts/runsc.sh). gVisor capsules take their addresses from
	// GVisorSubnet (default 10.201.0.0/16), in their own nftables table
	// <Instance>-gv and cgroup parent /<Instance>-gvisor.
	RunscPath    string
	GVisorSubnet netip.Prefix
	// MicroVM offers microVM isolation (QEMU; KVM where /dev/kvm works,
	// else TCG), with the guest kernel in GuestKernel (default: the newest
	// in vm.KernelCache, made by scripts/guest-kernel.sh) and addresses
	// from MicroVMSubnet (default 10.202.0.0/16, nftables table
	// <Instance>-vm).
	MicroVM       bool
	GuestKernel   string
	MicroVMSubnet netip.Prefix
	// Out receives the human-facing output: banner and template progress.
	Out io.Writer
	// Progress draws progress bars on Out (set it when Out is a terminal).
	Progress bool
	// Logger receives structured logs.
	Logger *slog.Logger
}

func (c *Config) fill() error {
	if c.Home == "" {
		return errors.New("up: Config.Home is required")
	}
	if c.EnvdPath == "" {
		return errors.New("up: Config.EnvdPath is required")
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:9725"
	}
	if c.ProxyListen == "" {
		c.ProxyListen = controlplane.DefaultProxyListen
	}
	if c.AgentListen == "" {
		c.AgentListen = "127.0.0.1:0"
	}
	switch c.OnExit {
	case "":
		c.OnExit = OnExitPause
	case OnExitPause, OnExitDestroy:
	default:
		return fmt.Errorf("up: on-exit must be pause or destroy, not %q", c.OnExit)
	}
	if c.CacheDir == "" {
		c.CacheDir = "/var/cache/wrenn"
	}
	if c.DebianMirror == "" {
		c.DebianMirror = "http://deb.debian.org/debian"
	}
	if c.DefaultDiskSizeMB <= 0 {
		c.DefaultDiskSizeMB = 5120
	}
	if c.Instance == "" {
		c.Instance = "wrenn"
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.DefaultIsolation == "" {
		c.DefaultIsolation = runtime.IsolationContainer
	}
	if !runtime.ValidIsolation(c.DefaultIsolation) {
		return fmt.Errorf("up: default isolation %q is not one of %v", c.DefaultIsolation, runtime.KnownIsolations)
	}
	if !c.GVisorSubnet.IsValid() {
		c.GVisorSubnet = netip.MustParsePrefix("10.201.0.0/16")
	}
	if !c.MicroVMSubnet.IsValid() {
		c.MicroVMSubnet = netip.MustParsePrefix("10.202.0.0/16")
	}
	if err := c.Overcommit.Validate(); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if c.Overcommit.CPU == 0 {
		c.Overcommit.CPU = scheduler.DefaultOvercommit.CPU
	}
	if c.Overcommit.Memory == 0 {
		c.Overcommit.Memory = scheduler.DefaultOvercommit.Memory
	}
	if c.Overcommit.Disk == 0 {
		c.Overcommit.Disk = scheduler.DefaultOvercommit.Disk
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// App is a running single-node Wrenn.
type App struct {
	cfg   Config
	log   *slog.Logger
	store store.Store
	cp    *controlplane.Server
	drv   *container.Driver
	isos  *runtime.Isolations
	// more are the drivers of the other isolations (gVisor, microVM), with
	// the cgroup parent each made ("" for none).
	more  []extraDriver
	agent *hostagent.Agent
	tmpls *template.Store

	ln, agentLn net.Listener
	proxyLn     net.Listener
	url         string
	proxyURL    string
	adminKey    string
	firstStart  bool
	hostID      string
	credential  string
	agentRPC    hostagentv1connect.HostAgentServiceClient
	transport   *http.Transport // to the agent and the API, closed with the App

	ready    chan struct{}
	baseDone chan struct{}
	started  time.Time
	outMu    sync.Mutex
}

// New prepares WRENN_HOME, opens the store, creates the admin user and key
// on first start, starts the runtime (re-adopting capsules left by a
// previous run), registers this host and binds both listeners. Nothing is
// served until Run.
func New(ctx context.Context, cfg Config) (_ *App, err error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	a := &App{
		cfg: cfg, log: cfg.Logger.With("component", "up"), started: time.Now(),
		ready: make(chan struct{}), baseDone: make(chan struct{}),
		tmpls: &template.Store{Dir: filepath.Join(cfg.Home, "templates")},
	}
	defer func() {
		if err != nil {
			a.closeAll(false)
		}
	}()
	if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
		return nil, fmt.Errorf("up: WRENN_HOME: %w", err)
	}
	if err := os.MkdirAll(a.tmpls.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("up: templates dir: %w", err)
	}
	secret, err := loadOrCreateSecret(filepath.Join(cfg.Home, "server.secret"))
	if err != nil {
		return nil, err
	}
	if a.store, err = controlplane.OpenStore(ctx, filepath.Join(cfg.Home, "wrenn.db")); err != nil {
		return nil, fmt.Errorf("up: open store: %w", err)
	}
	if err := a.bootstrapAdmin(ctx); err != nil {
		return nil, err
	}
	if a.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("up: listen on %s: %w (is another wrenn up running?)", cfg.Listen, err)
	}
	a.url = "http://" + dialable(a.ln.Addr().(*net.TCPAddr))
	if a.proxyLn, err = net.Listen("tcp", cfg.ProxyListen); err != nil {
		return nil, fmt.Errorf("up: proxy listen on %s: %w (is another wrenn up running?)", cfg.ProxyListen, err)
	}
	a.proxyURL = "http://" + dialable(a.proxyLn.Addr().(*net.TCPAddr))
	if a.agentLn, err = net.Listen("tcp", cfg.AgentListen); err != nil {
		return nil, fmt.Errorf("up: agent listen on %s: %w", cfg.AgentListen, err)
	}
	if a.cp, err = controlplane.New(ctx, controlplane.Config{
		Listen: a.ln.Addr().String(), ProxyListen: a.proxyLn.Addr().String(), Store: a.store, Secret: secret, PublicURL: a.url,
		HeartbeatInterval: cfg.HeartbeatInterval, Logger: cfg.Logger, GitHub: cfg.GitHub,
		DefaultIsolation: cfg.DefaultIsolation, EventRetention: cfg.EventRetention, WebhookAllowPrivate: cfg.WebhookAllowPrivate,
	}); err != nil {
		return nil, err
	}
	if err := a.registerHost(ctx); err != nil {
		return nil, err
	}
	if err := a.startAgent(ctx); err != nil {
		return nil, err
	}
	// Report the isolations the agent runs now, so a create right after
	// start is placed by them (not by the next heartbeat).
	u, err := a.usage(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := a.store.HostHeartbeat(ctx, a.hostID, storeUsage(u)); err != nil {
		return nil, fmt.Errorf("up: heartbeat: %w", err)
	}
	return a, nil
}

// URL is the API's base URL, e.g. http://127.0.0.1:9725.
func (a *App) URL() string { return a.url }

// ProxyURL is the port proxy's base URL, e.g. http://127.0.0.1:9726:
// capsule ports are at ProxyURL()/proxy/{capsule}/{port}/.
func (a *App) ProxyURL() string { return a.proxyURL }

// AdminKey is the admin API key (also in $WRENN_HOME/admin.key).
func (a *App) AdminKey() string { return a.adminKey }

// FirstStart reports whether this start created the admin user and key.
func (a *App) FirstStart() bool { return a.firstStart }

// HostID is this host's ID in the store.
func (a *App) HostID() string { return a.hostID }

// Ready is closed once the API serves and the minimal template is
// registered: capsules can be created.
func (a *App) Ready() <-chan struct{} { return a.ready }

// BaseDone is closed when the base template is available, or its build
// was skipped or failed.
func (a *App) BaseDone() <-chan struct{} { return a.baseDone }

// AdminKeyPath is where the admin key of home is kept.
func AdminKeyPath(home string) string { return filepath.Join(home, "admin.key") }

func (a *App) printf(format string, args ...any) {
	a.outMu.Lock()
	defer a.outMu.Unlock()
	_, _ = fmt.Fprintf(a.cfg.Out, format, args...)
}

// loadOrCreateSecret reads a secret file, creating it (64 random bytes in
// hex, mode 0600) when missing.
func loadOrCreateSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		var raw [64]byte
		_, _ = rand.Read(raw[:])
		b = fmt.Appendf(nil, "%x\n", raw[:])
		if err := writeFileAtomic(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("up: write secret: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("up: read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 32 {
		return nil, fmt.Errorf("up: secret in %s is shorter than 32 bytes", path)
	}
	return []byte(s), nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	return controlplane.WriteFileAtomic(path, b, mode)
}

// bootstrapAdmin makes sure an admin user exists in the platform team with
// a working API key in admin.key.
func (a *App) bootstrapAdmin(ctx context.Context) error {
	key, created, err := controlplane.BootstrapAdmin(ctx, a.store, AdminKeyPath(a.cfg.Home))
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	a.adminKey, a.firstStart = key, created
	return nil
}

type hostFile struct {
	HostID string `json:"host_id"`
}

// registerHost registers this machine as a host (once) and stores its
// credential, which the agent then requires from the control plane.
func (a *App) registerHost(ctx context.Context) error {
	path := filepath.Join(a.cfg.Home, "host.json")
	var hf hostFile
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &hf); err != nil {
			return fmt.Errorf("up: %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("up: read host file: %w", err)
	}
	if hf.HostID != "" {
		if _, err := a.store.GetHost(ctx, hf.HostID); errors.Is(err, store.ErrNotFound) {
			a.log.Warn("this host was removed from the store; registering it again", "host_id", hf.HostID)
			hf.HostID = ""
		} else if err != nil {
			return fmt.Errorf("up: host: %w", err)
		}
	}
	if hf.HostID == "" {
		token := auth.RandomToken("wrt_")
		if err := a.store.CreateHostToken(ctx, store.HostToken{
			TokenHash: auth.HashToken(token), ExpiresAt: time.Now().Add(time.Minute).UTC(),
		}); err != nil {
			return fmt.Errorf("up: host token: %w", err)
		}
		id := store.NewID(store.PrefixHost)
		if _, err := a.store.RegisterHost(ctx, auth.HashToken(token), store.Host{
			ID: id, Address: a.agentLn.Addr().String(), CredentialHash: auth.HashToken(a.cp.HostCredential(id)),
		}); err != nil {
			return fmt.Errorf("up: register host: %w", err)
		}
		b, _ := json.Marshal(hostFile{HostID: id})
		if err := writeFileAtomic(path, b, 0o600); err != nil {
			return fmt.Errorf("up: write host file: %w", err)
		}
		hf.HostID = id
	}
	a.hostID = hf.HostID
	a.credential = a.cp.HostCredential(a.hostID)
	if err := writeFileAtomic(filepath.Join(a.cfg.Home, "agent.secret"), []byte(a.credential+"\n"), 0o600); err != nil {
		return fmt.Errorf("up: write agent secret: %w", err)
	}
	// Mark the host online at its (possibly new) address before anything
	// can be scheduled or reconciled.
	u, err := a.usage(ctx)
	if err != nil {
		return err
	}
	if _, err := a.store.HostHeartbeat(ctx, a.hostID, storeUsage(u)); err != nil {
		return fmt.Errorf("up: first heartbeat: %w", err)
	}
	return nil
}

func storeUsage(u hostlink.Usage) store.HostUsage {
	out := store.HostUsage{
		Address: u.Address, VCPUs: u.VCPUs, MemoryMB: u.MemoryMB, DiskMB: u.DiskMB,
		UsedVCPUs: u.UsedVCPUs, UsedMemoryMB: u.UsedMemoryMB, UsedDiskMB: u.UsedDiskMB,
		CPUOvercommit: u.CPUOvercommit, MemoryOvercommit: u.MemoryOvercommit, DiskOvercommit: u.DiskOvercommit,
	}
	if u.Capabilities != nil {
		b, _ := json.Marshal(u.Capabilities)
		out.Capabilities = string(b)
	}
	return out
}

// capabilities is what this host can do (the driver's memory snapshots
// once it runs) and when it started.
func (a *App) capabilities() *hostlink.Capabilities {
	c := &hostlink.Capabilities{
		Runtimes: []string{"container"}, Isolations: []string{runtime.IsolationContainer}, StartedAt: a.started,
		MemorySnapshotsReason: "the runtime is not started yet",
	}
	if a.drv != nil {
		c.MemorySnapshots, c.MemorySnapshotsReason = a.drv.CRIUAvailable(), a.drv.CRIUUnavailableReason()
		for _, p := range a.drv.WarmPools() {
			c.WarmPools = append(c.WarmPools, hostlink.WarmPool(p))
		}
	}
	if a.isos != nil {
		c.DefaultIsolation = a.isos.Default()
		for _, st := range a.isos.Status() {
			c.IsolationSupport = append(c.IsolationSupport, hostlink.IsolationSupport{
				Name: st.Name, Available: st.Available, Reason: st.Reason, KVM: st.KVM, Backend: st.Backend,
			})
		}
		c.Isolations = c.Available()
	}
	return c
}

// capsuleDiskDir is where capsule disks live (the driver's state), or the
// home before the driver made it.
func (a *App) capsuleDiskDir() string {
	dir := filepath.Join(a.cfg.Home, "agent", "container")
	if _, err := os.Stat(dir); err != nil {
		return a.cfg.Home
	}
	return dir
}

// usage is this host's capacity and what its capsules reserve. Disk is the
// free space of the filesystem holding capsule disks, not its size.
func (a *App) usage(ctx context.Context) (hostlink.Usage, error) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return hostlink.Usage{}, fmt.Errorf("up: sysinfo: %w", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(a.capsuleDiskDir(), &st); err != nil {
		return hostlink.Usage{}, fmt.Errorf("up: statfs: %w", err)
	}
	u := hostlink.Usage{
		Address:          a.agentLn.Addr().String(),
		VCPUs:            int64(goruntime.NumCPU()),
		MemoryMB:         int64(si.Totalram*uint64(si.Unit)) >> 20, //nolint:gosec // RAM sizes fit in int64
		DiskMB:           int64(st.Bavail*uint64(st.Bsize)) >> 20,  //nolint:gosec // disk sizes fit in int64
		CPUOvercommit:    a.cfg.Overcommit.CPU,
		MemoryOvercommit: a.cfg.Overcommit.Memory,
		DiskOvercommit:   a.cfg.Overcommit.Disk,
		Capabilities:     a.capabilities(),
	}
	caps, err := a.store.ListCapsulesByHost(ctx, a.hostID)
	if err != nil {
		return hostlink.Usage{}, fmt.Errorf("up: list capsules: %w", err)
	}
	for _, c := range caps {
		switch c.Status {
		case store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused:
			u.UsedVCPUs += c.VCPUs
			u.UsedMemoryMB += c.MemoryMB
			u.UsedDiskMB += c.DiskSizeMB
		case store.CapsuleHibernated:
			u.UsedDiskMB += c.DiskSizeMB
		}
	}
	return u, nil
}

func (a *App) startAgent(ctx context.Context) error {
	netCfg := network.Config{Subnet: a.cfg.Subnet, Table: a.cfg.Instance, NetnsPrefix: a.cfg.Instance + "-", DNSUpstream: a.cfg.DNSUpstream}
	stateDir := filepath.Join(a.cfg.Home, "agent")
	drv, err := container.New(ctx, container.Config{
		StateDir:          filepath.Join(stateDir, "container"),
		Templates:         *a.tmpls,
		EnvdPath:          a.cfg.EnvdPath,
		DefaultDiskSizeMB: a.cfg.DefaultDiskSizeMB,
		CgroupParent:      "/" + a.cfg.Instance,
		Network:           netCfg,
		CRIUPath:          a.cfg.CRIUPath,
		CRIUEnv:           a.cfg.CRIUEnv,
		DisableCRIU:       a.cfg.DisableCRIU,
		DisableUserNS:     a.cfg.DisableUserNS,
		ColdSpares:        a.cfg.ColdSpares,
		Logger:            a.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("up: runtime: %w", err)
	}
	a.drv = drv
	a.isos = runtime.NewIsolations(runtime.IsolationContainer)
	a.isos.Register(runtime.IsolationContainer, drv)
	a.startMoreIsolations(ctx, stateDir)
	agent, err := hostagent.New(ctx, hostagent.Config{
		Driver: a.isos, StateDir: stateDir, Templates: a.tmpls, DefaultTemplate: BaseTemplate,
		Secret: a.credential, Version: buildinfo.Version, Logger: a.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("up: host agent: %w", err)
	}
	a.agent = agent
	// The control plane calls this agent in-process, not over loopback TCP
	// (output streams: one copy instead of two kernel copies; issue 21).
	a.cp.SetLocalAgent(a.agentLn.Addr().String(), agent.Handler())
	a.transport = &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}
	hc := &http.Client{Transport: secretTransport{secret: a.credential, base: a.transport}}
	a.agentRPC = hostagentv1connect.NewHostAgentServiceClient(hc, "http://"+a.agentLn.Addr().String())
	return nil
}

// secretTransport presents the host secret to the in-process agent.
type secretTransport struct {
	secret string
	base   http.RoundTripper
}

func (t secretTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(hostagent.SecretHeader, t.secret)
	return t.base.RoundTrip(r)
}

// Run serves the API and the agent, builds the default templates, and
// heartbeats, until ctx ends; then it pauses or destroys this host's
// capsules (Config.OnExit) and shuts everything down. Run closes the App.
func (a *App) Run(ctx context.Context) error {
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := a.cp.Serve(serveCtx, a.ln, a.proxyLn); err != nil {
			errc <- fmt.Errorf("control plane: %w", err)
		}
	})
	wg.Go(func() {
		if err := a.agent.Serve(serveCtx, a.agentLn, hostagent.ServerConfig{Addr: a.agentLn.Addr().String(), Logger: a.cfg.Logger}); err != nil {
			errc <- fmt.Errorf("host agent: %w", err)
		}
	})
	bgCtx, stopBG := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() {
		// Capsules a previous run left pending or starting (it was killed
		// mid-create) are resolved before the first heartbeat, so creates
		// are not refused for capacity those ghosts hold.
		if err := a.cp.ReconcileHost(bgCtx, a.hostID); err != nil && bgCtx.Err() == nil {
			a.log.Warn("reconcile at start", "err", err)
		}
		hl := &hostlink.Client{BaseURL: a.url, HTTP: &http.Client{Transport: a.transport, Timeout: 30 * time.Second}}
		hl.Run(bgCtx, a.hostID, a.credential, a.cfg.HeartbeatInterval, a.usage, a.log)
	})
	bg.Go(func() { a.templates(bgCtx) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	stopBG()
	bg.Wait()
	a.printf("Stopping Wrenn: %s capsules…\n", map[OnExit]string{OnExitPause: "pausing", OnExitDestroy: "destroying"}[a.cfg.OnExit])
	exitErr := a.onExit(context.WithoutCancel(ctx))
	stopServing()
	wg.Wait()
	a.closeAll(a.cfg.OnExit == OnExitDestroy)
	select {
	case err := <-errc:
		runErr = errors.Join(runErr, err)
	default:
	}
	return errors.Join(runErr, exitErr)
}

// onExit pauses or destroys every capsule of this host.
func (a *App) onExit(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	caps, err := a.store.ListCapsulesByHost(ctx, a.hostID)
	if err != nil {
		return fmt.Errorf("up: list capsules: %w", err)
	}
	var errs []error
	n := 0
	svc, sys := a.cp.Capsules(), capsules.SystemScope()
	for _, c := range caps {
		switch a.cfg.OnExit {
		case OnExitPause:
			if c.Status != store.CapsuleRunning {
				continue
			}
			if _, err := svc.Pause(ctx, capsules.ShutdownScope(), c.ID, false); err != nil {
				errs = append(errs, fmt.Errorf("pause %s: %w", c.ID, err))
				continue
			}
		case OnExitDestroy:
			if err := svc.Destroy(ctx, sys, c.ID, capsules.DestroyOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("destroy %s: %w", c.ID, err))
				continue
			}
		}
		n++
	}
	// Capsules the agent runs but the store no longer knows (e.g. a delete
	// that reached the store only) must not outlive a destroy exit.
	if a.cfg.OnExit == OnExitDestroy {
		resp, err := a.agentRPC.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
		h, herr := a.store.GetHost(ctx, a.hostID)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("list agent capsules: %w", err))
		case herr != nil:
			errs = append(errs, fmt.Errorf("read this host: %w", herr))
		default:
			for _, c := range resp.Msg.GetCapsules() {
				if err := svc.DestroyOrphan(ctx, h, c.GetCapsuleId()); err != nil {
					errs = append(errs, fmt.Errorf("destroy %s: %w", c.GetCapsuleId(), err))
				}
			}
		}
	}
	a.printf("%d capsule(s) %s.\n", n, map[OnExit]string{OnExitPause: "paused", OnExitDestroy: "destroyed"}[a.cfg.OnExit])
	return errors.Join(errs...)
}

// closeAll releases everything New opened. With cleanHost it also removes
// the runtime's host objects (no capsule may be left).
func (a *App) closeAll(cleanHost bool) {
	// Dependents first: the control plane (API, reconciler, build runner)
	// calls the agent, which drives the runtime. Stopping it first means
	// no request can create a capsule (and its network) after the host
	// was cleaned.
	if a.cp != nil {
		a.cp.Close()
	}
	if a.ln != nil {
		_ = a.ln.Close()
	}
	if a.proxyLn != nil {
		_ = a.proxyLn.Close()
	}
	if a.agent != nil {
		_ = a.agent.Close()
	}
	for _, m := range a.more {
		_ = m.close()
		if cleanHost {
			if err := m.net.RemoveTable(); err != nil {
				a.log.Warn("remove nftables table", "isolation", m.isolation, "err", err)
			}
			if m.cgroupParent != "" {
				removeCgroupParents(m.cgroupParent)
			}
		}
	}
	if a.drv != nil {
		_ = a.drv.Close()
		if cleanHost {
			if err := a.drv.Network().RemoveTable(); err != nil {
				a.log.Warn("remove nftables table", "err", err)
			}
			removeCgroupParents("/" + a.cfg.Instance)
		}
	}
	if a.transport != nil {
		a.transport.CloseIdleConnections()
	}
	if a.agentLn != nil {
		_ = a.agentLn.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

// removeCgroupParents removes the (empty) cgroup parent directories of an
// instance in every hierarchy; non-empty ones stay.
func removeCgroupParents(parent string) {
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return
	}
	_ = os.Remove(filepath.Join("/sys/fs/cgroup", parent))
	for _, e := range entries {
		if e.IsDir() {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", e.Name(), parent))
		}
	}
}

// dialable is addr with an unspecified IP (0.0.0.0, ::) replaced by
// loopback, for URLs this machine's clients can use.
func dialable(addr *net.TCPAddr) string {
	ip := addr.IP
	if ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(addr.Port))
}
