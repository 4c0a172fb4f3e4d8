// Package vm is the microVM runtime driver: each capsule is a virtual
// machine with its own kernel (Debian's cloud kernel, fetched by
// scripts/guest-kernel.sh), booted by a VMM (the VMM interface; first
// backend QEMU's microvm machine, KVM where /dev/kvm exists, TCG
// emulation elsewhere) from an initramfs holding busybox, the virtio and
// overlay modules, envd and a small init (guest/init).
//
// Disks: the template's rootfs as a read-only ext4 image shared by all its
// capsules (built once per template version, image.go) and a per-capsule
// sparse writable ext4 disk of the capsule's disk size; the guest init
// mounts an overlay of the two and makes envd PID 1. Network: the
// capsule's namespace and veth come from internal/network exactly as for
// container capsules (same address, firewall, egress policy, DNS, port
// proxy); inside the namespace a tap (txqueuelen 5000) reaches the guest,
// which is always 169.254.0.21/30, and the namespace translates (net.go).
// Guest RAM is a file shared with the VMM (Config.MemDir, tmpfs by
// default); pause to disk saves the device state with shared RAM skipped
// and runs the RAM file, the device state and the writable disk through
// the snapshot engine (snapshot.go).
//
// State: <StateDir>/capsules/<key>/ holds state.json, the writable disk
// and the VMM's log; <StateDir>/images/ the template images; <MemDir>/<key>.mem
// the guest RAM of a running capsule.
//
// Invariants:
//   - state.json is written once every resource of the capsule exists and
//     rewritten atomically on each change; Recover re-adopts a capsule only
//     if its resources (namespace, VM process) are intact and removes every
//     trace of the others (VM processes, namespaces, rules, RAM files).
//   - Calls on one capsule are serialized by its mutex; the driver lock only
//     guards the maps.
//   - A failed create, start or restore leaves no process, namespace, tap,
//     rule or file behind; a failed restore keeps the snapshot.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// Config configures the microVM driver.
type Config struct {
	// StateDir holds capsule directories and template images. Required.
	StateDir string
	// Templates is where template rootfs trees live. Required.
	Templates template.Store
	// EnvdPath is the static envd binary put into every guest. Required.
	EnvdPath string
	// KernelDir is a directory made by scripts/guest-kernel.sh (vmlinuz,
	// vmlinux, modules/). Required.
	KernelDir string
	// BusyboxPath is a static busybox for the initramfs (default
	// /bin/busybox from Debian's busybox-static).
	BusyboxPath string
	// MemDir holds the guest RAM files (default /dev/shm/wrenn-vm: tmpfs,
	// so guest memory is never written back to a disk while it runs).
	MemDir string
	// SocketDir holds the VMM control sockets (default /run/wrenn-vm).
	SocketDir string
	// VMM is the hypervisor backend (default QEMU).
	VMM VMM
	// KVM: nil detects /dev/kvm; set to force (false: always TCG).
	KVM *bool
	// Network configures capsule addressing (internal/network).
	Network network.Config
	// Defaults for fields a Spec leaves at zero (default limits.Defaults).
	DefaultVCPUs, DefaultMemoryMB, DefaultDiskSizeMB int
	// MinMemoryMB is the smallest memory a Spec may ask for (default 64:
	// below that the guest kernel does not boot).
	MinMemoryMB int
	// BootTimeout bounds Start's wait for envd (default 2 minutes: TCG on
	// a busy host is slow).
	BootTimeout time.Duration
	// Snapshots is the snapshot engine pause to disk publishes to
	// (default: a local store at <StateDir>/snapshots).
	Snapshots *snapshot.Manager
	// GuestTSCkHz is passed to a TCG guest as tsc_early_khz (its kernel
	// cannot calibrate the TSC against emulated timers on a busy host);
	// 0 reads the host's from /proc/cpuinfo.
	GuestTSCkHz int
	// CreateSteps, if set, sees every step list before it runs (Steps.Op
	// is OpCreate, OpStart or OpRestore); tests inject failures this way.
	CreateSteps func(*runtime.Steps)
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Operations run as runtime.Steps lists.
const (
	// OpCreate: dir, network (concurrently with image), image, disk, state.
	OpCreate = "create"
	// OpStart: memory, boot, wait-ready, state.
	OpStart = "start"
	// OpRestore: dir, network, image, fetch (disk, RAM and device state
	// from the store), boot (load the device state), resume, state.
	OpRestore = "restore"
)

// Driver is the microVM runtime driver.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	net      *network.Manager
	vmm      VMM
	kvm      bool
	initrd   string
	envdDisk string
	kernel   string
	capsDir  string
	client   *http.Client
	snaps    *snapshot.Manager
	tscKHz   int

	mu       sync.Mutex
	caps     map[string]*capsule // by public ID
	imageMu  sync.Mutex
	imageFor map[string]*sync.Mutex
	pools    poolSet
}

var (
	_ runtime.Driver         = (*Driver)(nil)
	_ runtime.Pauser         = (*Driver)(nil)
	_ runtime.Snapshotter    = (*Driver)(nil)
	_ runtime.NetworkUpdater = (*Driver)(nil)
)

type record struct {
	ID        string                `json:"id"`
	Key       string                `json:"key"`
	Spec      runtime.Spec          `json:"spec"`
	State     runtime.State         `json:"state"`
	Net       network.Allocation    `json:"net"`
	Image     string                `json:"image"`
	CreatedAt time.Time             `json:"created_at"`
	StartedAt time.Time             `json:"started_at"`
	Memory    bool                  `json:"memory_kept"`
	PID       int                   `json:"pid,omitempty"`
	Snapshot  *runtime.SnapshotInfo `json:"snapshot,omitempty"`
	// Parent is the snapshot the capsule was restored from; the next
	// Snapshot diffs against it and then deletes it.
	Parent string `json:"parent,omitempty"`
	// Pool marks a warm-pool microVM (pool.go): hidden from the public
	// calls until Take hands it over; Recover removes it.
	Pool bool `json:"pool,omitempty"`
}

type capsule struct {
	mu   sync.Mutex
	rec  record
	m    Machine // nil unless running or paused
	gone bool
}

// New returns a driver: it checks the host (QEMU, the guest kernel,
// nftables), builds the initramfs and adopts nothing (call Recover).
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.StateDir == "" || cfg.Templates.Dir == "" || cfg.EnvdPath == "" || cfg.KernelDir == "" {
		return nil, errors.New("vm: StateDir, Templates, EnvdPath and KernelDir are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("driver", "microvm")
	if cfg.BusyboxPath == "" {
		cfg.BusyboxPath = "/bin/busybox"
	}
	if cfg.MemDir == "" {
		cfg.MemDir = "/dev/shm/wrenn-vm"
	}
	if cfg.SocketDir == "" {
		cfg.SocketDir = "/run/wrenn-vm"
	}
	if cfg.DefaultVCPUs == 0 {
		cfg.DefaultVCPUs = int(limits.Defaults.VCPUs)
	}
	if cfg.DefaultMemoryMB == 0 {
		cfg.DefaultMemoryMB = int(limits.Defaults.MemoryMB)
	}
	if cfg.DefaultDiskSizeMB == 0 {
		cfg.DefaultDiskSizeMB = int(limits.Defaults.DiskSizeMB)
	}
	if cfg.MinMemoryMB == 0 {
		cfg.MinMemoryMB = 64
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.BootTimeout < 0 {
		cfg.BootTimeout = 0
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = abs
	kernel := filepath.Join(cfg.KernelDir, "vmlinuz")
	if _, err := os.Stat(kernel); err != nil {
		return nil, fmt.Errorf("vm: guest kernel missing (run scripts/guest-kernel.sh): %w", err)
	}
	if st, err := os.Stat(cfg.EnvdPath); err != nil || st.IsDir() {
		return nil, fmt.Errorf("vm: envd binary %q missing (make envd)", cfg.EnvdPath)
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return nil, fmt.Errorf("vm: mkfs.ext4 not found (apt-get install e2fsprogs): %w", err)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("vm: nft not found (apt-get install nftables): %w", err)
	}
	if cfg.VMM == nil {
		q, err := NewQEMU(cfg.SocketDir, log)
		if err != nil {
			return nil, err
		}
		cfg.VMM = q
	}
	var kvm bool
	if cfg.KVM != nil {
		kvm = *cfg.KVM
	} else if q, ok := cfg.VMM.(*QEMU); ok {
		kvm = kvmUsable(q.Path, kernel)
	}
	d := &Driver{
		cfg:      cfg,
		log:      log,
		vmm:      cfg.VMM,
		kvm:      kvm,
		kernel:   kernel,
		capsDir:  filepath.Join(cfg.StateDir, "capsules"),
		caps:     map[string]*capsule{},
		imageFor: map[string]*sync.Mutex{},
		// Until the guest's eth0 is up its SYNs vanish: a short connect
		// timeout retries soon instead of holding a probe (and so the
		// moment envd is seen) for the whole request timeout.
		client: &http.Client{Transport: &http.Transport{
			DisableKeepAlives: true, Proxy: nil,
			DialContext: (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext,
		}},
		tscKHz: cfg.GuestTSCkHz,
	}
	d.pools.init()
	if d.tscKHz == 0 {
		d.tscKHz = hostTSCkHz()
	}
	for _, dir := range []string{d.capsDir, filepath.Join(cfg.StateDir, "images"), cfg.MemDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
	}
	d.initrd = filepath.Join(cfg.StateDir, "initramfs.cpio")
	if err := buildInitramfs(d.initrd, cfg.KernelDir, cfg.BusyboxPath, "", nil); err != nil {
		return nil, err
	}
	// envd reaches the guest on a small read-only disk, not in the
	// initramfs: unpacking it there would cost the guest twice its size
	// in RAM during boot (a 96 MiB guest ran out).
	d.envdDisk = filepath.Join(cfg.StateDir, "envd.ext4")
	if err := buildEnvdDisk(ctx, d.envdDisk, cfg.EnvdPath); err != nil {
		return nil, err
	}
	if cfg.Snapshots == nil {
		st, err := store.OpenLocal(filepath.Join(cfg.StateDir, "snapshots"))
		if err != nil {
			return nil, fmt.Errorf("vm: snapshot store: %w", err)
		}
		tmp := filepath.Join(cfg.StateDir, "snapshot-tmp")
		if err := os.RemoveAll(tmp); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return nil, err
		}
		cfg.Snapshots = &snapshot.Manager{Store: st, TempDir: tmp, Log: log}
		d.cfg.Snapshots = cfg.Snapshots
	}
	d.snaps = cfg.Snapshots
	// The guest sees InsideAddr behind the tap (net.go); the namespace's
	// eth0 keeps the capsule's host-side address and NATs to it.
	cfg.Network.HostSideAddress = true
	if d.net, err = network.New(cfg.Network, log); err != nil {
		return nil, err
	}
	log.Info("microvm driver ready", "vmm", d.vmm.Name(), "kvm", kvm, "kernel", cfg.KernelDir)
	return d, nil
}

// kvmUsable reports whether KVM works here: /dev/kvm opens and a VM
// actually runs on it. A device node, even one that creates VMs, is not
// enough: in some sandboxes its vCPUs never run. The probe boots the
// guest kernel with no root under QEMU with KVM: it panics and, with
// -no-reboot, QEMU exits within seconds on a working KVM. Done once per
// process.
func kvmUsable(qemu, kernel string) bool {
	kvmOnce.Do(func() {
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			return
		}
		_ = f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M",
			"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none",
			"-kernel", kernel, "-append", "panic=-1 reboot=t quiet")
		kvmOK = cmd.Run() == nil && ctx.Err() == nil
	})
	return kvmOK
}

var (
	kvmOnce sync.Once
	kvmOK   bool
)

// Config returns the driver's configuration, defaults filled in.
func (d *Driver) Config() Config { return d.cfg }

// UsesKVM reports whether this driver's VMs use KVM.
func (d *Driver) UsesKVM() bool { return d.kvm }

// Backend is the VMM's short name (qemu, firecracker), for the host's
// capabilities.
func (d *Driver) Backend() string { return d.vmm.Name() }

// hostTSCkHz reads the host CPU's frequency from /proc/cpuinfo (the TSC
// of a TCG guest ticks at the host's rate); 0 if unknown.
func hostTSCkHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && f > 0 {
				return int(f * 1000)
			}
		}
	}
	return 0
}

// Name implements runtime.Driver.
func (d *Driver) Name() string { return "microvm" }

// Network exposes the network manager.
func (d *Driver) Network() *network.Manager { return d.net }

func newKey() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (d *Driver) dir(key string) string      { return filepath.Join(d.capsDir, key) }
func (d *Driver) diskPath(key string) string { return filepath.Join(d.dir(key), "disk.ext4") }
func (d *Driver) memPath(key string) string  { return filepath.Join(d.cfg.MemDir, key+".mem") }

func (d *Driver) normalize(spec runtime.Spec) (runtime.Spec, template.Template, error) {
	spec, tmpl, err := runtime.Normalize(spec, runtime.Defaults{
		VCPUs: d.cfg.DefaultVCPUs, MemoryMB: d.cfg.DefaultMemoryMB, DiskSizeMB: d.cfg.DefaultDiskSizeMB,
	}, d.cfg.Templates.Get)
	if err != nil {
		return spec, tmpl, err
	}
	if spec.VCPUs < 1 || spec.VCPUs > 64 {
		return spec, tmpl, fmt.Errorf("%w: vcpus %d (1-64)", runtime.ErrInvalidSpec, spec.VCPUs)
	}
	if spec.MemoryMB < d.cfg.MinMemoryMB {
		return spec, tmpl, fmt.Errorf("%w: memory %d MiB is below the microVM minimum %d MiB", runtime.ErrInvalidSpec, spec.MemoryMB, d.cfg.MinMemoryMB)
	}
	if total := hostMemoryMB(); total > 0 && spec.MemoryMB > total {
		return spec, tmpl, fmt.Errorf("%w: memory %d MiB is more than this host has (%d MiB)", runtime.ErrInvalidSpec, spec.MemoryMB, total)
	}
	if spec.DiskSizeMB < 16 {
		return spec, tmpl, fmt.Errorf("%w: disk %d MiB (at least 16)", runtime.ErrInvalidSpec, spec.DiskSizeMB)
	}
	for k, v := range spec.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return spec, tmpl, fmt.Errorf("%w: environment variable %q", runtime.ErrInvalidSpec, k)
		}
	}
	if err := spec.Network.Validate(); err != nil {
		return spec, tmpl, err
	}
	return spec, tmpl, nil
}

// hostMemoryMB is the host's RAM in MiB (0 if unknown).
func hostMemoryMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.Atoi(f[1])
			return kb >> 10
		}
	}
	return 0
}

// get returns the capsule locked, or ErrNotFound (warm-pool microVMs are
// not found).
func (d *Driver) get(id string) (*capsule, error) { return d.getAny(id, false) }

// getAny is get that also finds warm-pool microVMs if pool is set.
func (d *Driver) getAny(id string, pool bool) (*capsule, error) {
	d.mu.Lock()
	c := d.caps[id]
	d.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("capsule %q: %w", id, runtime.ErrNotFound)
	}
	c.mu.Lock()
	if c.gone || c.rec.Pool && !pool {
		c.mu.Unlock()
		return nil, fmt.Errorf("capsule %q: %w", id, runtime.ErrNotFound)
	}
	return c, nil
}

func (d *Driver) info(rec *record) runtime.Info {
	return runtime.Info{
		ID: rec.ID, Template: rec.Spec.Template, State: rec.State,
		VCPUs: rec.Spec.VCPUs, MemoryMB: rec.Spec.MemoryMB, DiskSizeMB: rec.Spec.DiskSizeMB,
		IP: rec.Net.Guest, AllowInternet: rec.Spec.AllowInternet, Network: rec.Spec.Network,
		Labels: rec.Spec.Labels, CreatedAt: rec.CreatedAt, StartedAt: rec.StartedAt,
		MemoryKept: rec.Memory, PID: rec.PID,
	}
}

// save writes state.json atomically.
func (d *Driver) save(rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(d.dir(rec.Key), "state.json")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// reserve claims id for a new capsule (ErrExists if taken).
func (d *Driver) reserve(id string, c *capsule) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.caps[id]; ok && old != nil {
		return fmt.Errorf("capsule %q: %w", id, runtime.ErrExists)
	}
	d.caps[id] = c
	return nil
}

func (d *Driver) unreserve(id string, c *capsule) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.caps[id] == c {
		delete(d.caps, id)
	}
}

func (d *Driver) hook(s *runtime.Steps) *runtime.Steps {
	s.Log = d.log
	if d.cfg.CreateSteps != nil {
		d.cfg.CreateSteps(s)
	}
	return s
}

// Create implements runtime.Driver.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (runtime.Info, error) {
	return d.create(ctx, spec, false)
}

// create does Create; pool makes a warm-pool microVM.
func (d *Driver) create(ctx context.Context, spec runtime.Spec, pool bool) (runtime.Info, error) {
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	c := &capsule{rec: record{ID: spec.ID, Key: newKey(), Spec: spec, State: runtime.StateCreated, CreatedAt: time.Now().UTC(), Pool: pool}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	rec := &c.rec
	s := &runtime.Steps{Op: OpCreate, ID: spec.ID}
	s.Append(d.createSteps(rec, tmpl)...)
	s.Append(
		runtime.Step{Name: "disk", Do: func(ctx context.Context) error { return d.makeDisk(ctx, rec) }},
		runtime.Step{Name: "state", Do: func(context.Context) error { return d.save(rec) }},
	)
	if err := d.hook(s).Run(ctx); err != nil {
		d.unreserve(spec.ID, c)
		c.gone = true
		return runtime.Info{}, err
	}
	return d.info(rec), nil
}

// createSteps are the steps create and restore share: dir, network, image.
func (d *Driver) createSteps(rec *record, tmpl template.Template) []runtime.Step {
	return []runtime.Step{
		{
			Name: "dir",
			Do:   func(context.Context) error { return os.MkdirAll(d.dir(rec.Key), 0o700) },
			Undo: func(context.Context) error { return os.RemoveAll(d.dir(rec.Key)) },
		},
		{
			Name:  "network",
			Async: true,
			Do: func(ctx context.Context) error {
				a, err := d.net.Setup(rec.Key, rec.Spec.AllowInternet, rec.Spec.Network)
				if err != nil {
					return err
				}
				rec.Net = a
				return setupTap(ctx, a)
			},
			Undo: func(context.Context) error { return d.teardownNet(rec) },
		},
		{
			Name: "image",
			Do: func(ctx context.Context) error {
				img, err := d.templateImage(ctx, tmpl)
				rec.Image = img
				return err
			},
		},
	}
}

func (d *Driver) teardownNet(rec *record) error {
	a := rec.Net
	if a.Key == "" {
		a = network.Allocation{Key: rec.Key, Index: -1, Netns: d.net.NetnsPath(rec.Key)}
	}
	err := d.net.Teardown(a)
	rec.Net = network.Allocation{}
	return err
}

// envFile is the capsule's environment as the guest init reads it: one
// base64 line per KEY=VALUE.
func envFile(rec *record) []byte {
	env := map[string]string{
		"PATH":             "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":             "/root",
		"WRENN_CAPSULE_ID": rec.ID,
	}
	maps.Copy(env, rec.Spec.Env)
	env["WRENN_CAPSULE_ID"] = rec.ID
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(env)) {
		b.WriteString(base64.StdEncoding.EncodeToString([]byte(k + "=" + env[k])))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Start implements runtime.Driver: boots the VM and waits until envd
// answers (a guest that cannot boot fails here with its console's end).
func (d *Driver) Start(ctx context.Context, id string) (runtime.Info, error) {
	return d.start(ctx, id, false)
}

func (d *Driver) start(ctx context.Context, id string, pool bool) (runtime.Info, error) {
	c, err := d.getAny(id, pool)
	if err != nil {
		return runtime.Info{}, err
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StateCreated && c.rec.State != runtime.StateStopped {
		return runtime.Info{}, fmt.Errorf("start %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	rec := &c.rec
	s := &runtime.Steps{Op: OpStart, ID: id}
	s.Append(d.bootSteps(c, nil)...)
	s.Append(runtime.Step{Name: "wait-ready", Do: func(ctx context.Context) error { return d.waitReady(ctx, c) }})
	s.Append(runtime.Step{Name: "state", Do: func(context.Context) error {
		rec.State, rec.StartedAt, rec.Memory = runtime.StateRunning, time.Now().UTC(), false
		return d.save(rec)
	}})
	if err := d.hook(s).Run(ctx); err != nil {
		rec.PID, rec.State = 0, runtime.StateStopped
		_ = d.save(rec)
		return runtime.Info{}, err
	}
	return d.info(rec), nil
}

// bootSteps launch the VM: memory (a fresh RAM file unless restoring),
// boot. incoming, if set, gives the device state file to load.
func (d *Driver) bootSteps(c *capsule, incoming func() *os.File) []runtime.Step {
	rec := &c.rec
	var steps []runtime.Step
	if incoming == nil {
		steps = append(steps, runtime.Step{
			Name: "memory",
			Do: func(context.Context) error {
				_ = os.Remove(d.memPath(rec.Key))
				f, err := os.OpenFile(d.memPath(rec.Key), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return err
				}
				return errors.Join(f.Truncate(int64(rec.Spec.MemoryMB)<<20), f.Close())
			},
			Undo: func(context.Context) error { return removeMissingOK(d.memPath(rec.Key)) },
		})
	}
	steps = append(steps, runtime.Step{
		Name: "boot",
		Do: func(ctx context.Context) error {
			spec := d.machineSpec(rec)
			if incoming != nil {
				spec.Incoming = incoming()
			}
			m, err := d.vmm.Launch(ctx, spec)
			if err != nil {
				return err
			}
			c.m, rec.PID = m, m.PID()
			return nil
		},
		Undo: func(ctx context.Context) error { return d.stopVM(ctx, c) },
	})
	return steps
}

func (d *Driver) machineSpec(rec *record) MachineSpec {
	// init_on_free=1: the guest zeroes the pages it frees, so memory it
	// used and gave back is zero blocks, which a snapshot does not store.
	cmdline := "console=ttyS0 quiet loglevel=4 panic=-1 reboot=t i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd nokaslr random.trust_cpu=on init_on_free=1"
	if !d.kvm && d.tscKHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.Itoa(d.tscKHz) + " tsc=reliable"
	}
	return MachineSpec{
		Dir: d.dir(rec.Key), Kernel: d.kernel, Initrd: d.initrd, Cmdline: cmdline,
		VCPUs: rec.Spec.VCPUs, MemoryMB: rec.Spec.MemoryMB, MemPath: d.memPath(rec.Key),
		Disks: []Disk{{Path: rec.Image, ReadOnly: true}, {Path: d.diskPath(rec.Key)}, {Path: d.envdDisk, ReadOnly: true}},
		Netns: rec.Net.Netns, Tap: TapName, MAC: guestMAC,
		KVM:                 d.kvm,
		BalloonStatsSeconds: balloonStatsSeconds,
		Metadata:            map[string]string{"template_id": rec.Spec.Template, "capsule_id": rec.ID},
	}
}

// stopVM ends the capsule's VM (if any) and removes its RAM file.
func (d *Driver) stopVM(ctx context.Context, c *capsule) error {
	var err error
	if c.m != nil {
		err = c.m.Stop(ctx)
		c.m = nil
	} else if c.rec.PID != 0 {
		err = killVM(c.rec.PID, d.dir(c.rec.Key))
	}
	c.rec.PID = 0
	return errors.Join(err, removeMissingOK(d.memPath(c.rec.Key)))
}

// killVM kills a VM process no Machine holds (one whose command line
// names the capsule directory's key), waiting until it is gone.
func killVM(pid int, dir string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(b), "wrenn-"+filepath.Base(dir)) {
		return nil
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil //nolint:nilerr // gone
	}
	_ = p.Kill()
	for range 200 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("vm: process %d does not exit", pid)
}

func removeMissingOK(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// waitReady polls envd's /health until it answers, the VM exits or the
// boot timeout passes. It keeps the guest console's output meanwhile (the
// ring buffer dies with QEMU) to say why a guest did not come up.
func (d *Driver) waitReady(ctx context.Context, c *capsule) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	url := "http://" + d.info(&c.rec).EnvdAddr() + "/health"
	var console strings.Builder
	drain := func() {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		console.WriteString(c.m.Console(cctx))
		ccancel()
	}
	for i := 0; ; i++ {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		resp, err := d.client.Do(req)
		rcancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				if d.log.Enabled(ctx, slog.LevelDebug) {
					drain()
					d.log.Debug("guest boot timeline (uptime s)", "capsule_id", c.rec.ID, "steps", bootTimeline(console.String()))
				}
				return nil
			}
		}
		if i%4 == 0 {
			drain()
			sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			stopped := c.m.GuestStopped(sctx)
			scancel()
			if stopped {
				drain()
				return fmt.Errorf("vm: the guest stopped before envd answered; console: %s", consoleTail(console.String()))
			}
		}
		select {
		case <-c.m.Exited():
			return fmt.Errorf("vm: the VMM exited before envd answered; console: %s", consoleTail(console.String()))
		case <-ctx.Done():
			drain()
			return fmt.Errorf("vm: envd did not answer within %v: %w; console: %s", d.cfg.BootTimeout, ctx.Err(), consoleTail(console.String()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// bootTimeline picks the guest init's timestamps ("wrenn-init: t=<uptime>
// <step>") out of its console: "init=0.61 modules=0.93 ...".
func bootTimeline(con string) string {
	var out []string
	for _, l := range strings.Split(con, "\n") {
		_, rest, ok := strings.Cut(l, "wrenn-init: t=")
		if f := strings.Fields(rest); ok && len(f) == 2 {
			out = append(out, f[1]+"="+f[0])
		}
	}
	return strings.Join(out, " ")
}

// consoleTail returns the last lines of the guest console, after the
// lines that say why a boot failed (the init's and switch_root's
// messages, a kernel panic) if a panic's trace pushed them out.
func consoleTail(con string) string {
	lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(con, "\r", "")), "\n")
	var why []string
	if len(lines) > 12 {
		for _, l := range lines[:len(lines)-12] {
			if strings.Contains(l, "wrenn-init:") && !strings.Contains(l, "wrenn-init: t=") || strings.Contains(l, "switch_root:") || strings.Contains(l, "Kernel panic") {
				why = append(why, l)
			}
		}
		lines = append(why, lines[len(lines)-12:]...)
	}
	s := strings.TrimSpace(strings.Join(lines, " | "))
	if s == "" {
		return "(no output)"
	}
	return s
}

// Stop implements runtime.Driver: the VM is ended (its RAM dropped); the
// disks and network stay, so Start boots it again with its files.
func (d *Driver) Stop(ctx context.Context, id string, _ time.Duration) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	switch c.rec.State {
	case runtime.StateRunning, runtime.StatePaused:
	case runtime.StateStopped, runtime.StateCreated:
		return nil
	default:
		return fmt.Errorf("stop %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	if err := d.stopVM(ctx, c); err != nil {
		return err
	}
	c.rec.State = runtime.StateStopped
	return d.save(&c.rec)
}

// Destroy implements runtime.Driver.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	return d.destroy(ctx, id, false)
}

func (d *Driver) destroy(ctx context.Context, id string, pool bool) error {
	c, err := d.getAny(id, pool)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	errs := []error{d.stopVM(ctx, c), d.teardownNet(&c.rec)}
	if c.rec.Snapshot != nil {
		errs = append(errs, d.deleteSnapshot(ctx, c.rec.Snapshot.ID))
	}
	if c.rec.Parent != "" {
		errs = append(errs, d.deleteSnapshot(ctx, c.rec.Parent))
	}
	errs = append(errs, os.RemoveAll(d.dir(c.rec.Key)))
	c.gone = true
	d.unreserve(id, c)
	return errors.Join(errs...)
}

// Inspect implements runtime.Driver.
func (d *Driver) Inspect(_ context.Context, id string) (runtime.Info, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.Info{}, err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	return d.info(&c.rec), nil
}

// noticeExit marks a capsule whose VM has exited (guest poweroff, crash)
// as stopped.
func (d *Driver) noticeExit(c *capsule) {
	if c.m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c.m.GuestStopped(ctx) {
		_ = c.m.Stop(ctx)
		c.m, c.rec.PID = nil, 0
		_ = removeMissingOK(d.memPath(c.rec.Key))
		c.rec.State = runtime.StateStopped
		_ = d.save(&c.rec)
	}
	select {
	case <-ctx.Done():
	default:
	}
	if c.m == nil {
		return
	}
	select {
	case <-c.m.Exited():
		_ = c.m.Close()
		c.m, c.rec.PID = nil, 0
		_ = removeMissingOK(d.memPath(c.rec.Key))
		c.rec.State = runtime.StateStopped
		_ = d.save(&c.rec)
	default:
	}
}

// List implements runtime.Driver.
func (d *Driver) List(ctx context.Context) ([]runtime.Info, error) {
	d.mu.Lock()
	ids := slices.Sorted(maps.Keys(d.caps))
	d.mu.Unlock()
	var out []runtime.Info
	for _, id := range ids {
		if info, err := d.Inspect(ctx, id); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// Stats implements runtime.Driver: host-side figures of the VM process
// (CPU time, resident memory including the guest RAM it touched, threads)
// and of the writable disk (allocated and total bytes).
func (d *Driver) Stats(_ context.Context, id string) (runtime.Stats, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.Stats{}, err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	if c.rec.State != runtime.StateRunning && c.rec.State != runtime.StatePaused {
		return runtime.Stats{}, fmt.Errorf("stats of %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	s := runtime.Stats{Time: time.Now(), MemoryLimitBytes: uint64(c.rec.Spec.MemoryMB) << 20} //nolint:gosec // positive
	cpu, rss, threads, err := procStats(c.rec.PID)
	if err != nil {
		return s, err
	}
	s.CPUUsage, s.MemoryBytes, s.PIDs = cpu, rss, threads
	if st, err := os.Stat(d.diskPath(c.rec.Key)); err == nil {
		s.DiskTotalBytes = uint64(st.Size()) //nolint:gosec // positive
		s.DiskUsedBytes = diskAllocated(st)
	}
	if c.rec.Net.Veth != "" {
		n, err := d.net.Counters(c.rec.Net)
		if err == nil {
			s.NetBytesIn, s.NetBytesOut, s.NetDroppedPackets = n.BytesIn, n.BytesOut, n.Dropped()
		}
	}
	return s, nil
}

// Close implements runtime.Driver: VMs keep running, except warm-pool
// ones, which are destroyed.
func (d *Driver) Close() error {
	d.pools.close(d)
	d.mu.Lock()
	caps := slices.Collect(maps.Values(d.caps))
	d.mu.Unlock()
	for _, c := range caps {
		c.mu.Lock()
		if c.m != nil {
			_ = c.m.Close()
		}
		c.mu.Unlock()
	}
	d.net.Close()
	return nil
}

// Pause implements runtime.Pauser (vCPUs stopped, memory kept).
func (d *Driver) Pause(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	if c.rec.State != runtime.StateRunning {
		return fmt.Errorf("pause %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	if err := c.m.Pause(ctx); err != nil {
		return err
	}
	c.rec.State = runtime.StatePaused
	return d.save(&c.rec)
}

// Resume implements runtime.Pauser.
func (d *Driver) Resume(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	d.noticeExit(c)
	if c.rec.State != runtime.StatePaused {
		return fmt.Errorf("resume %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	if err := c.m.Resume(ctx); err != nil {
		return err
	}
	c.rec.State = runtime.StateRunning
	return d.save(&c.rec)
}

// UpdateNetwork implements runtime.NetworkUpdater.
func (d *Driver) UpdateNetwork(_ context.Context, id string, allowInternet bool, p *runtime.NetworkPolicy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StateSnapshotted && c.rec.Net.Veth != "" {
		if err := d.net.SetPolicy(c.rec.Net, allowInternet, p); err != nil {
			return err
		}
	}
	c.rec.Spec.AllowInternet = allowInternet
	c.rec.Spec.Network = p
	return d.save(&c.rec)
}

// KernelCache is where scripts/guest-kernel.sh caches guest kernels.
const KernelCache = "/var/cache/wrenn/guest-kernel"

// FindKernel returns the most recently cached complete guest kernel directory under
// root (as scripts/guest-kernel.sh leaves them).
func FindKernel(root string) (string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("vm: no guest kernel in %s (run scripts/guest-kernel.sh): %w", root, err)
	}
	var best string
	var bestTime time.Time
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "modules", "order")); err != nil {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, "vmlinuz"))
		if err != nil {
			continue
		}
		if best == "" || st.ModTime().After(bestTime) {
			best, bestTime = dir, st.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("vm: no guest kernel in %s (run scripts/guest-kernel.sh)", root)
	}
	return best, nil
}
