// Package container is the runtime driver for hosts without KVM: each
// capsule is an OCI container run by runc (Debian's package), with envd
// bind-mounted read-only as PID 1, its own network namespace
// (internal/network), an overlay rootfs with a real disk quota
// (internal/rootfs), cgroup limits, a default seccomp profile, a minimal
// capability set and no-new-privileges.
//
// State: every capsule has a directory <StateDir>/capsules/<key>/ holding
// state.json, config.json (the OCI bundle), the disk image and mount points.
// <key> is a random internal name used for runc, the netns, the cgroup and
// the veth, so a warm-pool capsule can take a new public ID without
// renaming host objects. runc keeps its own state under <StateDir>/runc.
//
// Pause to disk publishes the capsule's ext4 disk image to the snapshot
// engine (package snapshot; by default a local store under
// <StateDir>/snapshots, or any shared store such as S3) and deletes it
// locally; Restore materialises it as a sparse file again. Where `criu
// check` passes at start (Config.CRIUPath), the processes are checkpointed
// first and their CRIU images stored as a second image published before the
// disk header (criu.go); Restore then resumes them with `runc restore`, or
// boots the capsule with its files if that fails. A restored
// capsule remembers its snapshot as the parent its next pause diffs
// against; that pause supersedes (deletes) it, and so does Destroy.
//
// Invariants:
//   - state.json is written only once every resource of the capsule exists,
//     and rewritten (atomically) on each state change; Recover trusts it only
//     after checking the resources, and Sweep removes every host object
//     (runc container, cgroup, mount, loop device, netns, veth, nft rule)
//     whose key is not adopted.
//   - Calls on one capsule are serialized by its mutex; the driver lock only
//     guards the maps.
//   - A capsule disk image is never read by the snapshot engine while it is
//     mounted or attached to a loop device; a failed or cancelled Restore
//     leaves no host object (the snapshot in the store is kept).
package container

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// Config configures the container driver.
type Config struct {
	// StateDir holds capsule directories and runc state (e.g.
	// $WRENN_HOME/runtime/container). Required.
	StateDir string
	// Templates is where template rootfs trees live. Required.
	Templates template.Store
	// EnvdPath is the host path of the static envd binary. Required.
	EnvdPath string
	// RuncPath is the runc binary (default "runc" from PATH).
	RuncPath string
	// Network configures capsule addressing.
	Network network.Config
	// Defaults for fields a Spec leaves at zero.
	DefaultVCPUs      int // default 1
	DefaultMemoryMB   int // default 512
	DefaultDiskSizeMB int // default 5120 (WRENN_DEFAULT_ROOTFS_SIZE, read in main)
	// PidsLimit bounds the tasks of one capsule (default 1024).
	PidsLimit int64
	// CgroupParent is the cgroup path capsules are placed under (default "/wrenn").
	CgroupParent string
	// CgroupRoot is where cgroup hierarchies are mounted (default "/sys/fs/cgroup").
	CgroupRoot string
	// Snapshots is the snapshot engine pause-to-disk publishes capsule
	// disk images to (block images, zero blocks skipped, diffs over the
	// parent merged per its MaxDiffGenerations). Any store works: a shared
	// S3 store lets a capsule paused here resume on another host. Default:
	// a local store at <StateDir>/snapshots, temp files in
	// <StateDir>/snapshot-tmp.
	Snapshots *snapshot.Manager
	// SnapshotGCMinAge is the minAge of the garbage collection the driver
	// runs after it deletes a superseded snapshot: unreferenced builds
	// younger than this survive (they may belong to a publish in flight on
	// another host). Default 10 minutes; negative disables the driver's GC
	// (the operator then runs Manager.GC).
	SnapshotGCMinAge time.Duration
	// CRIUPath is the criu binary memory snapshots use (e.g. the one
	// scripts/criu.sh builds). "" looks up "criu" in PATH. Memory snapshots
	// are on when `criu check` passes with it at start (CRIUAvailable).
	CRIUPath string
	// CRIUEnv is extra environment for every criu run (check, dump,
	// restore), e.g. "CRIU_FAULT=130" on hosts whose CPU debug registers
	// do not work for CRIU's breakpoints.
	CRIUEnv []string
	// DisableCRIU keeps pause-to-disk to files only even where criu works.
	DisableCRIU bool
	// CRIUTimeout bounds one checkpoint or restore (default 5 minutes); a
	// restore that takes longer is killed and the capsule boots instead.
	// A restore is also bounded by its image size (a minute plus a second
	// per 50 MB), so a damaged image that leaves criu spinning delays a
	// resume by about a minute, not the whole CRIUTimeout.
	CRIUTimeout time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Driver is the container runtime driver.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	net      *network.Manager
	cg       cgroups
	runcRoot string
	capsDir  string
	criu     bool
	criuPath string
	client   *http.Client
	snaps    *snapshot.Manager

	mu   sync.Mutex
	caps map[string]*capsule // by public ID

	pools poolSet
}

var (
	_ runtime.Driver      = (*Driver)(nil)
	_ runtime.Pauser      = (*Driver)(nil)
	_ runtime.Snapshotter = (*Driver)(nil)
	_ runtime.WarmPooler  = (*Driver)(nil)
)

// record is what state.json holds.
type record struct {
	ID        string                `json:"id"`
	Key       string                `json:"key"`
	Spec      runtime.Spec          `json:"spec"`
	State     runtime.State         `json:"state"`
	Net       network.Allocation    `json:"net"`
	CreatedAt time.Time             `json:"created_at"`
	StartedAt time.Time             `json:"started_at"`
	Memory    bool                  `json:"memory_kept"`
	Pool      bool                  `json:"pool,omitempty"`
	PID       int                   `json:"pid,omitempty"`
	Snapshot  *runtime.SnapshotInfo `json:"snapshot,omitempty"`
	// Parent is the snapshot the capsule's disk was restored from; the
	// next Snapshot diffs against it and then deletes it.
	Parent string `json:"parent,omitempty"`
}

type capsule struct {
	mu   sync.Mutex
	rec  record
	gone bool // destroyed; holders of a stale pointer must not use it
}

// New returns a driver. It checks the host (runc, cgroups, nftables), but
// adopts nothing: call Recover before serving.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.StateDir == "" || cfg.Templates.Dir == "" || cfg.EnvdPath == "" {
		return nil, errors.New("container: StateDir, Templates and EnvdPath are required")
	}
	if cfg.RuncPath == "" {
		cfg.RuncPath = "runc"
	}
	if cfg.DefaultVCPUs == 0 {
		cfg.DefaultVCPUs = 1
	}
	if cfg.DefaultMemoryMB == 0 {
		cfg.DefaultMemoryMB = 512
	}
	if cfg.DefaultDiskSizeMB == 0 {
		cfg.DefaultDiskSizeMB = 5120
	}
	if cfg.PidsLimit == 0 {
		cfg.PidsLimit = 1024
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/wrenn"
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	runc, err := exec.LookPath(cfg.RuncPath)
	if err != nil {
		return nil, fmt.Errorf("container: runc not found (apt-get install runc): %w", err)
	}
	cfg.RuncPath = runc
	if st, err := os.Stat(cfg.EnvdPath); err != nil || st.IsDir() {
		return nil, fmt.Errorf("container: envd binary %q missing (make envd)", cfg.EnvdPath)
	}
	if !filepath.IsAbs(cfg.StateDir) {
		abs, err := filepath.Abs(cfg.StateDir)
		if err != nil {
			return nil, err
		}
		cfg.StateDir = abs
	}
	if cfg.CRIUTimeout <= 0 {
		cfg.CRIUTimeout = 5 * time.Minute
	}
	if cfg.SnapshotGCMinAge == 0 {
		cfg.SnapshotGCMinAge = 10 * time.Minute
	}
	if cfg.Snapshots == nil {
		st, err := store.OpenLocal(filepath.Join(cfg.StateDir, "snapshots"))
		if err != nil {
			return nil, fmt.Errorf("container: snapshot store: %w", err)
		}
		// Only this driver writes here: whatever is left is from a pause
		// that a crash interrupted.
		tmp := filepath.Join(cfg.StateDir, "snapshot-tmp")
		if err := os.RemoveAll(tmp); err != nil {
			return nil, fmt.Errorf("container: %w", err)
		}
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return nil, fmt.Errorf("container: %w", err)
		}
		cfg.Snapshots = &snapshot.Manager{Store: st, TempDir: tmp, Log: cfg.Logger.With("driver", "container")}
	}
	d := &Driver{
		snaps:    cfg.Snapshots,
		cfg:      cfg,
		log:      cfg.Logger.With("driver", "container"),
		runcRoot: filepath.Join(cfg.StateDir, "runc"),
		capsDir:  filepath.Join(cfg.StateDir, "capsules"),
		caps:     map[string]*capsule{},
		client: &http.Client{Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
		}},
	}
	d.pools.init()
	for _, dir := range []string{d.runcRoot, d.capsDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("container: %w", err)
		}
	}
	if d.cg, err = detectCgroups(cfg.CgroupRoot); err != nil {
		return nil, err
	}
	if d.net, err = network.New(cfg.Network, d.log); err != nil {
		return nil, err
	}
	// Debian 12's CRIU 3.17 fails `criu check` on recent kernels: then
	// pause-to-disk keeps files only.
	if !cfg.DisableCRIU {
		path, err := criuCheck(ctx, cfg.CRIUPath, cfg.CRIUEnv)
		d.criu, d.criuPath = err == nil, path
		if err != nil {
			d.log.Info("memory snapshots off", "err", err)
		}
	}
	d.log.Info("container driver ready", "cgroup_v2", d.cg.v2, "criu", d.criu, "criu_path", d.criuPath, "runc", runc)
	return d, nil
}

// Name implements runtime.Driver.
func (d *Driver) Name() string { return "container" }

// Network exposes the network manager (rule counts for diagnostics).
func (d *Driver) Network() *network.Manager { return d.net }

// CRIUAvailable reports whether `criu check` passed at start (memory
// snapshots are on).
func (d *Driver) CRIUAvailable() bool { return d.criu }

var idRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

func newKey() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (d *Driver) paths(key string) rootfs.Paths {
	return rootfs.Paths{Dir: filepath.Join(d.capsDir, key)}
}

func (d *Driver) cgroupPath(key string) string { return d.cfg.CgroupParent + "/" + key }

// normalize applies defaults and validates a spec.
func (d *Driver) normalize(spec runtime.Spec) (runtime.Spec, template.Template, error) {
	if !idRE.MatchString(spec.ID) {
		return spec, template.Template{}, fmt.Errorf("%w: id %q", runtime.ErrInvalidSpec, spec.ID)
	}
	tmpl, err := d.cfg.Templates.Get(spec.Template)
	if err != nil {
		return spec, tmpl, fmt.Errorf("%w: %q: %w", runtime.ErrNoTemplate, spec.Template, err)
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = d.cfg.DefaultVCPUs
	}
	if spec.MemoryMB == 0 {
		spec.MemoryMB = d.cfg.DefaultMemoryMB
	}
	if spec.DiskSizeMB == 0 {
		spec.DiskSizeMB = d.cfg.DefaultDiskSizeMB
	}
	if spec.VCPUs < 0 || spec.MemoryMB < 16 || spec.DiskSizeMB < 0 {
		return spec, tmpl, fmt.Errorf("%w: vcpus %d, memory %d MB, disk %d MB", runtime.ErrInvalidSpec, spec.VCPUs, spec.MemoryMB, spec.DiskSizeMB)
	}
	// The writable layer is never smaller than the template itself, so
	// rewriting every file of the template cannot run out of space.
	if m := tmpl.SizeMB() + 16; spec.DiskSizeMB < m {
		spec.DiskSizeMB = m
	}
	for k := range spec.Env {
		if err := validEnvKey(k); err != nil {
			return spec, tmpl, fmt.Errorf("%w: %w", runtime.ErrInvalidSpec, err)
		}
	}
	return spec, tmpl, nil
}

// Create implements runtime.Driver.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (runtime.Info, error) {
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	c := &capsule{}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	rec, err := d.build(ctx, spec, tmpl, false, nil)
	if err != nil {
		d.unreserve(spec.ID, c)
		return runtime.Info{}, err
	}
	c.rec = rec
	return d.info(&c.rec), nil
}

func (d *Driver) reserve(id string, c *capsule) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.caps[id]; ok {
		return fmt.Errorf("capsule %s: %w", id, runtime.ErrExists)
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
	c.gone = true
}

// build makes every resource of a new capsule and writes its state. On
// error it removes what it made. image, if not nil, writes the capsule's
// disk image (restoring a snapshot) instead of a blank one; it runs while
// the network is set up.
func (d *Driver) build(ctx context.Context, spec runtime.Spec, tmpl template.Template, pool bool, image func(path string) error) (rec record, err error) {
	key := newKey()
	p := d.paths(key)
	rec = record{ID: spec.ID, Key: key, Spec: spec, State: runtime.StateCreated, CreatedAt: time.Now().UTC(), Pool: pool}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return rec, fmt.Errorf("container: %w", err)
	}
	defer func() {
		if err != nil {
			d.release(context.WithoutCancel(ctx), &rec)
		}
	}()
	// Network and rootfs are independent: make them at the same time.
	var netErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Net, netErr = d.net.Setup(key, spec.AllowInternet && !pool, spec.Network)
	}()
	var fsErr error
	if image != nil {
		fsErr = image(p.Image())
	}
	if fsErr == nil {
		fsErr = rootfs.Mount(ctx, p, tmpl.Rootfs, spec.DiskSizeMB, filepath.Join(d.cfg.StateDir, "blank"), nil)
	}
	<-done
	if err := errors.Join(netErr, fsErr); err != nil {
		return rec, err
	}
	if err := d.writeEtc(p.Root(), spec.ID, rec.Net); err != nil {
		return rec, err
	}
	if err := d.writeBundle(&rec); err != nil {
		return rec, err
	}
	if err := d.save(&rec); err != nil {
		return rec, err
	}
	return rec, nil
}

// writeEtc gives the capsule its /etc/hosts and /etc/hostname (in the
// writable layer).
func (d *Driver) writeEtc(root, id string, na network.Allocation) error {
	ip := na.Guest
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	if dnsAddr, ok := d.net.DNSServer(na); ok {
		// Replace (never follow: an image may ship a symlink) resolv.conf.
		rc := filepath.Join(etc, "resolv.conf")
		if err := os.Remove(rc); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("container: %w", err)
		}
		f, err := os.OpenFile(rc, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return fmt.Errorf("container: %w", err)
		}
		_, werr := fmt.Fprintf(f, "nameserver %s\noptions edns0\n", dnsAddr)
		if err := errors.Join(werr, f.Close()); err != nil {
			return fmt.Errorf("container: resolv.conf: %w", err)
		}
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n%s\t%s\n", ip, id)
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return os.WriteFile(filepath.Join(etc, "hostname"), []byte(id+"\n"), 0o644)
}

func (d *Driver) writeBundle(rec *record) error {
	p := d.paths(rec.Key)
	s := ociSpec(bundleParams{
		Hostname:    rec.ID,
		Rootfs:      p.Root(),
		Envd:        d.cfg.EnvdPath,
		Netns:       rec.Net.Netns,
		CgroupsPath: d.cgroupPath(rec.Key),
		VCPUs:       rec.Spec.VCPUs,
		MemoryMB:    rec.Spec.MemoryMB,
		PidsLimit:   d.cfg.PidsLimit,
		Env:         rec.Spec.Env,
	})
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return writeAtomic(filepath.Join(p.Dir, "config.json"), b)
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return nil
}

func (d *Driver) save(rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return writeAtomic(filepath.Join(d.capsDir, rec.Key, "state.json"), b)
}

// release frees every host resource of a capsule; it is idempotent and
// does not depend on the record being complete.
func (d *Driver) release(ctx context.Context, rec *record) {
	var errs []error
	if err := d.runcDelete(ctx, rec.Key); err != nil {
		errs = append(errs, err)
	}
	if err := d.cg.remove(d.cgroupPath(rec.Key)); err != nil {
		errs = append(errs, err)
	}
	a := rec.Net
	if a.Key == "" {
		a = network.Allocation{Key: rec.Key, Index: -1, Netns: d.net.NetnsPath(rec.Key)}
	}
	if err := d.net.Teardown(a); err != nil {
		errs = append(errs, err)
	}
	// The directory goes last: while it exists, Recover can find the key.
	if err := rootfs.Remove(d.paths(rec.Key)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		d.log.Warn("release capsule", "id", rec.ID, "key", rec.Key, "err", err)
	}
}

func (d *Driver) runc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, d.cfg.RuncPath, append([]string{"--root", d.runcRoot}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (d *Driver) runcDelete(ctx context.Context, key string) error {
	// runc delete removes its state directory recursively: a rootfs bind
	// mount a killed `runc restore` left there (criu-root) must go first.
	if err := unmountUnder(filepath.Join(d.runcRoot, key)); err != nil {
		return err
	}
	out, err := d.runc(ctx, "delete", "--force", key)
	if err != nil && strings.Contains(string(out), "does not exist") {
		return nil
	}
	return err
}

type runcState struct {
	Status string `json:"status"`
	PID    int    `json:"pid"`
}

// state returns runc's view of a container ("" status if it does not exist).
func (d *Driver) state(ctx context.Context, key string) (runcState, error) {
	out, err := d.runc(ctx, "state", key)
	if err != nil {
		if strings.Contains(string(out), "does not exist") {
			return runcState{}, nil
		}
		return runcState{}, err
	}
	var st runcState
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("runc state: %w", err)
	}
	return st, nil
}

func (d *Driver) get(id string) (*capsule, error) {
	d.mu.Lock()
	c, ok := d.caps[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	return c, nil // locked
}

func (d *Driver) info(rec *record) runtime.Info {
	return runtime.Info{
		ID:            rec.ID,
		Template:      rec.Spec.Template,
		State:         rec.State,
		VCPUs:         rec.Spec.VCPUs,
		MemoryMB:      rec.Spec.MemoryMB,
		DiskSizeMB:    rec.Spec.DiskSizeMB,
		IP:            rec.Net.Guest,
		AllowInternet: rec.Spec.AllowInternet,
		Network:       rec.Spec.Network,
		Labels:        rec.Spec.Labels,
		CreatedAt:     rec.CreatedAt,
		StartedAt:     rec.StartedAt,
		MemoryKept:    rec.Memory,
		PID:           rec.PID,
	}
}

// Start implements runtime.Driver.
func (d *Driver) Start(ctx context.Context, id string) (runtime.Info, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.Info{}, err
	}
	defer c.mu.Unlock()
	if err := d.start(ctx, &c.rec); err != nil {
		return runtime.Info{}, err
	}
	return d.info(&c.rec), nil
}

func (d *Driver) start(ctx context.Context, rec *record) error {
	switch rec.State {
	case runtime.StateCreated, runtime.StateStopped:
	default:
		return fmt.Errorf("start capsule %s in state %s: %w", rec.ID, rec.State, runtime.ErrInvalidState)
	}
	p := d.paths(rec.Key)
	// A container left over from an earlier run (stopped) is replaced; a
	// created capsule has none, which saves a runc exec on the cold path.
	if rec.State == runtime.StateStopped {
		if err := d.runcDelete(ctx, rec.Key); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(p.Dir, "envd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer logf.Close()
	pidFile := filepath.Join(p.Dir, "pid")
	cmd := exec.CommandContext(ctx, d.cfg.RuncPath, "--root", d.runcRoot, "run", "--detach",
		"--bundle", p.Dir, "--pid-file", pidFile, rec.Key)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Run(); err != nil {
		_ = d.runcDelete(context.WithoutCancel(ctx), rec.Key)
		return fmt.Errorf("runc run %s: %w: %s", rec.ID, err, tail(filepath.Join(p.Dir, "envd.log")))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	rec.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	rec.State = runtime.StateRunning
	rec.StartedAt = time.Now().UTC()
	return d.save(rec)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Stop implements runtime.Driver.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	return d.stop(ctx, &c.rec, timeout)
}

func (d *Driver) stop(ctx context.Context, rec *record, timeout time.Duration) error {
	switch rec.State {
	case runtime.StateRunning, runtime.StatePaused:
	case runtime.StateCreated, runtime.StateStopped:
		return nil
	default:
		return fmt.Errorf("stop capsule %s in state %s: %w", rec.ID, rec.State, runtime.ErrInvalidState)
	}
	if rec.State == runtime.StatePaused {
		if err := d.cg.freeze(d.cgroupPath(rec.Key), false); err != nil {
			return err
		}
	}
	if _, err := d.runc(ctx, "kill", rec.Key, "TERM"); err == nil {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			st, err := d.state(ctx, rec.Key)
			if err != nil || st.Status == "stopped" || st.Status == "" {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := d.runcDelete(ctx, rec.Key); err != nil {
		return err
	}
	rec.State = runtime.StateStopped
	rec.PID = 0
	return d.save(rec)
}

// Destroy implements runtime.Driver.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	d.destroyLocked(ctx, c)
	d.dropParent(ctx, &c.rec)
	return nil
}

func (d *Driver) destroyLocked(ctx context.Context, c *capsule) {
	d.release(ctx, &c.rec)
	_ = os.RemoveAll(filepath.Join(d.capsDir, c.rec.Key))
	d.unreserve(c.rec.ID, c)
}

// Inspect implements runtime.Driver. A running capsule whose init died is
// reported as stopped.
func (d *Driver) Inspect(ctx context.Context, id string) (runtime.Info, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.Info{}, err
	}
	defer c.mu.Unlock()
	if c.rec.State == runtime.StateRunning && !d.alive(&c.rec) {
		// Confirm with runc before declaring the init dead.
		st, err := d.state(ctx, c.rec.Key)
		if err == nil && (st.Status == "stopped" || st.Status == "") {
			c.rec.State = runtime.StateStopped
			c.rec.PID = 0
			_ = d.save(&c.rec)
		}
	}
	return d.info(&c.rec), nil
}

// alive reports whether the capsule's init still runs: its PID exists and
// sits in the capsule's cgroup (so a reused PID does not count). It costs
// one /proc read instead of a runc exec.
func (d *Driver) alive(rec *record) bool {
	if rec.PID <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", rec.PID))
	return err == nil && strings.Contains(string(b), d.cgroupPath(rec.Key))
}

// List implements runtime.Driver.
func (d *Driver) List(ctx context.Context) ([]runtime.Info, error) {
	d.mu.Lock()
	ids := make([]string, 0, len(d.caps))
	for id := range d.caps {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	out := make([]runtime.Info, 0, len(ids))
	for _, id := range ids {
		info, err := d.Inspect(ctx, id)
		if errors.Is(err, runtime.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Stats implements runtime.Driver.
func (d *Driver) Stats(_ context.Context, id string) (runtime.Stats, error) {
	c, err := d.get(id)
	if err != nil {
		return runtime.Stats{}, err
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StateRunning && c.rec.State != runtime.StatePaused {
		return runtime.Stats{}, fmt.Errorf("stats of capsule %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	s := runtime.Stats{Time: time.Now()}
	s.CPUUsage, s.MemoryBytes, s.MemoryLimitBytes, s.PIDs, err = d.cg.usage(d.cgroupPath(c.rec.Key))
	if err != nil {
		return s, err
	}
	s.DiskUsedBytes, s.DiskTotalBytes, err = rootfs.Usage(d.paths(c.rec.Key))
	if err != nil {
		return s, err
	}
	return s, d.netStats(&c.rec, &s)
}

// Pause implements runtime.Pauser (cgroup freezer; memory stays).
func (d *Driver) Pause(_ context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StateRunning {
		return fmt.Errorf("pause capsule %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	if err := d.cg.freeze(d.cgroupPath(c.rec.Key), true); err != nil {
		return err
	}
	c.rec.State = runtime.StatePaused
	return d.save(&c.rec)
}

// Resume implements runtime.Pauser. A capsule that cannot be thawed is
// destroyed (with a context independent of the caller's).
func (d *Driver) Resume(ctx context.Context, id string) error {
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.rec.State != runtime.StatePaused {
		return fmt.Errorf("resume capsule %s in state %s: %w", id, c.rec.State, runtime.ErrInvalidState)
	}
	if err := d.cg.freeze(d.cgroupPath(c.rec.Key), false); err != nil {
		d.log.Error("resume failed, destroying capsule", "id", id, "err", err)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		d.destroyLocked(cctx, c)
		return fmt.Errorf("resume capsule %s (destroyed): %w", id, err)
	}
	c.rec.State = runtime.StateRunning
	return d.save(&c.rec)
}

// WaitReady polls envd's /health on the capsule until it answers 2xx.
func (d *Driver) WaitReady(ctx context.Context, info runtime.Info) error {
	url := "http://" + info.EnvdAddr() + "/health"
	var last error
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			cancel()
			return fmt.Errorf("envd on %s: %w", info.ID, err)
		}
		resp, err := d.client.Do(req)
		cancel()
		switch {
		case err != nil:
			last = err
		case resp.StatusCode/100 == 2:
			resp.Body.Close()
			return nil
		default:
			resp.Body.Close()
			last = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd on %s not ready: %w (last: %w)", info.ID, ctx.Err(), last)
		case <-time.After(time.Millisecond):
		}
	}
}

// Close stops the warm pools and destroys their capsules. Other capsules
// keep running for a later Recover.
func (d *Driver) Close() error {
	d.pools.close(d)
	d.net.Close()
	return nil
}

// Key returns the internal key (runc container ID) of a capsule, for tools
// and tests that need `runc exec`.
func (d *Driver) Key(id string) (string, error) {
	c, err := d.get(id)
	if err != nil {
		return "", err
	}
	defer c.mu.Unlock()
	return c.rec.Key, nil
}

// RuncRoot is the --root directory of this driver's runc state.
func (d *Driver) RuncRoot() string { return d.runcRoot }
