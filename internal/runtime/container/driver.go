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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
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
	// Runtime is the OCI runtime class: RuntimeRunc ("" too) or
	// RuntimeRunsc, gVisor (runsc.go: what changes under it).
	Runtime string
	// RunscPath is the static runsc binary (default "runsc" from PATH;
	// scripts/runsc.sh builds one).
	RunscPath string
	// RunscPlatform is gVisor's platform; "" picks kvm where /dev/kvm
	// opens, else systrap.
	RunscPlatform string
	// RunscFlags are extra runsc global flags (e.g. "--debug-log=/tmp/").
	RunscFlags []string
	// Network configures capsule addressing.
	Network network.Config
	// Defaults for fields a Spec leaves at zero (default: the product's,
	// limits.Defaults; DefaultDiskSizeMB may come from
	// WRENN_DEFAULT_ROOTFS_SIZE, read in main).
	DefaultVCPUs      int
	DefaultMemoryMB   int
	DefaultDiskSizeMB int
	// MinMemoryMB is the smallest memory a Spec may ask for (default
	// limits.Defaults.MinMemoryMB); tests may lower it.
	MinMemoryMB int
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
	// CRIUScratch is where a pause to disk has CRIU dump a capsule's
	// images before the snapshot store takes them (issue 21, item 3): ""
	// picks a directory of this driver's on /dev/shm when that is a tmpfs,
	// so the dump is not written to disk once by CRIU and again by the
	// store; "off" dumps into the capsule's directory. A dump goes to disk
	// anyway when the host's available memory is under twice the capsule's
	// memory limit (plus 256 MiB).
	CRIUScratch string
	// CRIUPageServer says when a pause streams its pages into the
	// snapshot store while CRIU dumps them (CRIU's page-server protocol
	// over loopback TCP, snapshot.CRIUPageServer) instead of having CRIU
	// write them to files for the store to read back: "" (auto) when the
	// capsule uses 1.5 GiB or more, or the dump cannot go to the scratch
	// tmpfs (too little free memory: the files would otherwise go to disk
	// and the memory be written twice); "on" always; "off" never.
	// Measured on a 2-core VM (docs/PERFORMANCE.md, "Pause and resume to
	// disk"): streaming halved a 2 GiB pause but was not reliably faster
	// at 256 MiB and 1 GiB (CRIU's dump slows down while the store works
	// beside it).
	CRIUPageServer string
	// DisableSeccomp runs capsules without the seccomp allow-list
	// (seccomp.go). For benchmarks only: the zero value is secure.
	DisableSeccomp bool
	// SeccompCompat32 lets 32-bit x86 programs (i386, x32 ABIs) run on an
	// x86-64 host: the filter then covers those ABIs too, which costs
	// about 9 ms of CPU per capsule start. Off: their calls are refused.
	SeccompCompat32 bool
	// DisableLXCFS turns off LXCFS (lxcfs.go): capsules then see the
	// host's memory, CPUs and uptime in /proc and nproc. On by default;
	// if lxcfs is missing or fails, the driver warns and runs without it
	// (LXCFS reports false).
	DisableLXCFS bool
	// LXCFSPath is the lxcfs binary (default "lxcfs" from PATH).
	LXCFSPath string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// CreateSteps, if set, sees every step list the driver is about to run
	// (Steps.Op is OpCreate, OpStart, OpWarm or OpRestore) and may read,
	// reorder, wrap or replace its steps; tests inject failures this way.
	CreateSteps func(*runtime.Steps)
	// DisableUserNS runs capsules without a user namespace (capsule root
	// is host root), for the hardening benchmark's baseline. The zero
	// value is the secure default: every capsule in its own user
	// namespace over an unprivileged host id range (userns.go).
	DisableUserNS bool
	// ColdSpares is how many spares (spares.go: a user namespace id range,
	// a held network namespace with its nftables chain, a mounted blank
	// disk of DefaultDiskSizeMB) the driver keeps ready for cold creates,
	// refilled in the background once Recover has run. 0 (the zero value)
	// is off; the agent and `wrenn up` use DefaultColdSpares.
	ColdSpares int
}

// Operations whose work the driver runs as a runtime.Steps list (Op).
const (
	// OpCreate is Create: dir, network (concurrent with the next steps up
	// to rootfs), rootfs, etc, bundle, state.
	OpCreate = "create"
	// OpStart is Start: start.
	OpStart = "start"
	// OpWarm makes a warm-pool capsule: the OpCreate steps, then start,
	// wait-ready, freeze.
	OpWarm = "warm"
	// OpTake hands a warm-pool capsule over (Take): thaw, hostname,
	// policy, etc, state.
	OpTake = "take"
	// OpRestore is Restore: the OpCreate steps with image before rootfs,
	// then memory (CRIU; a failure there falls back to start), start,
	// save.
	OpRestore = "restore"
)

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
	criuOff  string // why memory snapshots are off
	scratch  string // CRIUScratch resolved ("" for none)
	client   *http.Client
	snaps    *snapshot.Manager
	rt       runtimeClass

	// dumps: CRIU image directory → the *snapshot.CRIUPageServer holding
	// its pages until the pause publishes them (criu.go).
	dumps sync.Map

	mu   sync.Mutex
	caps map[string]*capsule // by public ID

	pools  poolSet
	spares spareSet // spares.go

	idsUsed map[uint32]bool // user namespace id ranges in use (guarded by mu)
	lxcfs   *lxcfs          // nil: off
	pin     *cpuPinner
	closed  atomic.Bool
}

var (
	_ runtime.Driver      = (*Driver)(nil)
	_ runtime.Pauser      = (*Driver)(nil)
	_ runtime.Snapshotter = (*Driver)(nil)
	_ runtime.WarmPooler  = (*Driver)(nil)

	_ runtime.WarmPoolReporter = (*Driver)(nil)
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
	// IDBase is the first host id of the capsule's user namespace range
	// (0: no user namespace; userns.go).
	IDBase uint32 `json:"id_base,omitempty"`
	// Publishing names the snapshot a pause to disk is storing; it is not
	// committed yet. A capsule recovered with it set crashed mid-pause:
	// Recover drops what the store received and keeps the capsule
	// (stopped, its disk mounted again).
	Publishing string `json:"publishing,omitempty"`
	// Releasing marks a committed pause to disk whose host resources
	// (processes, mounts, network, local image) are being freed; Recover
	// finishes the release.
	Releasing bool `json:"releasing,omitempty"`
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
		cfg.DefaultVCPUs = int(limits.Defaults.VCPUs)
	}
	if cfg.DefaultMemoryMB == 0 {
		cfg.DefaultMemoryMB = int(limits.Defaults.MemoryMB)
	}
	if cfg.DefaultDiskSizeMB == 0 {
		cfg.DefaultDiskSizeMB = int(limits.Defaults.DiskSizeMB)
	}
	if cfg.MinMemoryMB == 0 {
		cfg.MinMemoryMB = int(limits.Defaults.MinMemoryMB)
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
	var runc string
	if cfg.Runtime == "" || cfg.Runtime == RuntimeRunc {
		r, err := exec.LookPath(cfg.RuncPath)
		if err != nil {
			return nil, fmt.Errorf("container: runc not found (apt-get install runc): %w", err)
		}
		cfg.RuncPath, runc = r, r
	} else if cfg.Runtime != RuntimeRunsc {
		return nil, fmt.Errorf("container: unknown runtime %q (want %q or %q)", cfg.Runtime, RuntimeRunc, RuntimeRunsc)
	}
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
	if err := d.setupScratch(); err != nil {
		return nil, err
	}
	d.rt = runtimeClass{path: cfg.RuncPath}
	if cfg.Runtime == RuntimeRunsc {
		if err := d.setupRunsc(ctx); err != nil {
			return nil, err
		}
		cfg, runc = d.cfg, d.rt.path
	}
	for _, dir := range []string{d.runcRoot, d.capsDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("container: %w", err)
		}
	}
	if !cfg.DisableUserNS {
		// runc's init, already in the capsule's user namespace, walks to
		// the rootfs and the envd binary as an unprivileged host uid.
		for _, dir := range []string{d.capsDir, filepath.Dir(cfg.EnvdPath)} {
			if err := makeTraversable(dir, d.log); err != nil {
				return nil, err
			}
		}
	}
	var err error
	if d.cg, err = detectCgroups(cfg.CgroupRoot); err != nil {
		return nil, err
	}
	if d.net, err = network.New(cfg.Network, d.log); err != nil {
		return nil, err
	}
	// Debian 12's CRIU 3.17 fails `criu check` on recent kernels: then
	// pause-to-disk keeps files only.
	if d.rt.runsc {
		// runsc checkpoint/restore (setupRunsc).
	} else if !cfg.DisableCRIU {
		path, err := criuCheck(ctx, cfg.CRIUPath, cfg.CRIUEnv)
		d.criu, d.criuPath = err == nil, path
		if err != nil {
			d.criuOff = "criu check failed: " + err.Error()
			if cfg.CRIUPath != "" {
				// The operator asked for this binary: say loudly that it does not work.
				d.log.Warn("memory snapshots are OFF: the criu binary given does not work; pause to disk keeps files only", "criu", cfg.CRIUPath, "err", err)
			} else {
				d.log.Info("memory snapshots off", "err", err)
			}
		}
		if d.criu && !cfg.DisableUserNS && !criuJoinsUserns(ctx, path, cfg.CRIUEnv) {
			// A stock CRIU (4.2.1) restores a capsule into a new user
			// namespace with the dumped mapping and then cannot enter the
			// network namespace the driver made: it needs the patch
			// scripts/criu.sh applies (docs/CRIU.md, "User namespaces").
			d.criu = false
			d.criuOff = "this criu cannot restore into a capsule's user namespace (build it with scripts/criu.sh, which patches it)"
			d.log.Warn("memory snapshots are OFF: this criu cannot restore capsules into their user namespaces (not built by scripts/criu.sh with its patch); pause to disk keeps files only", "criu", path)
		}
	} else {
		d.criuOff = "disabled (--no-criu)"
	}
	d.startLXCFS(ctx)
	d.log.Info("container driver ready", "runtime", d.Runtime(), "platform", d.rt.platform, "cgroup_v2", d.cg.v2, "criu", d.criu, "criu_path", d.criuPath, "runc", runc, "seccomp", !cfg.DisableSeccomp, "lxcfs", d.lxcfs != nil)
	return d, nil
}

// Name implements runtime.Driver.
func (d *Driver) Name() string {
	if d.rt.runsc {
		return "gvisor"
	}
	return "container"
}

// Network exposes the network manager (rule counts for diagnostics).
func (d *Driver) Network() *network.Manager { return d.net }

// CRIUAvailable reports whether `criu check` passed at start (memory
// snapshots are on).
func (d *Driver) CRIUAvailable() bool { return d.criu }

// CRIUUnavailableReason says why memory snapshots are off ("" when on).
func (d *Driver) CRIUUnavailableReason() string { return d.criuOff }

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
	spec, tmpl, err := runtime.Normalize(spec, runtime.Defaults{
		VCPUs: d.cfg.DefaultVCPUs, MemoryMB: d.cfg.DefaultMemoryMB, DiskSizeMB: d.cfg.DefaultDiskSizeMB,
	}, d.cfg.Templates.Get)
	if err != nil {
		return spec, tmpl, err
	}
	if spec.VCPUs < 0 || spec.MemoryMB < d.cfg.MinMemoryMB || spec.DiskSizeMB < 0 {
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
	defer d.pools.busy()() // warm-pool refills wait (pool.go)
	spec, tmpl, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	if err := d.checkVolumes(spec); err != nil {
		return runtime.Info{}, err
	}
	c := &capsule{}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		return runtime.Info{}, err
	}
	c.rec = newRecord(spec, false)
	var s *runtime.Steps
	if sp := d.takeSpare(spec); sp != nil {
		// A spare's pieces (spares.go): only the template's part is left.
		c.rec.Key, c.rec.IDBase, c.rec.Net = sp.Key, sp.IDBase, sp.Net
		s = d.createSteps(OpCreate, &c.rec, tmpl, nil)
		if err := d.useSpare(s, &c.rec, tmpl); err != nil {
			d.unreserve(spec.ID, c)
			d.releaseSpare(sp)
			return runtime.Info{}, err
		}
	} else {
		s = d.createSteps(OpCreate, &c.rec, tmpl, nil)
	}
	if err := d.runSteps(ctx, s); err != nil {
		d.unreserve(spec.ID, c)
		return runtime.Info{}, err
	}
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

func newRecord(spec runtime.Spec, pool bool) record {
	return record{ID: spec.ID, Key: newKey(), Spec: spec, State: runtime.StateCreated, CreatedAt: time.Now().UTC(), Pool: pool}
}

// runSteps lets Config.CreateSteps see the list, then runs it.
func (d *Driver) runSteps(ctx context.Context, s *runtime.Steps) error {
	if d.cfg.CreateSteps != nil {
		d.cfg.CreateSteps(s)
	}
	return s.Run(ctx)
}

// createSteps returns the steps that make every resource of a new capsule
// (rec, with its key) and write its state: dir, network (set up while the
// disk is prepared), rootfs, etc, bundle, state. Each step's Undo removes
// what the step made, so a failed run leaves nothing. image, if not nil,
// becomes a step "image" before "rootfs" that writes the capsule's disk
// image (restoring a snapshot) instead of a blank one.
func (d *Driver) createSteps(op string, rec *record, tmpl template.Template, image func(path string) error) *runtime.Steps {
	p := d.paths(rec.Key)
	s := &runtime.Steps{Op: op, ID: rec.ID, Log: d.log}
	s.Append(
		runtime.Step{
			Name: "dir",
			Do: func(context.Context) error {
				if err := os.MkdirAll(p.Dir, 0o700); err != nil {
					return fmt.Errorf("container: %w", err)
				}
				if !d.cfg.DisableUserNS {
					// Traversable (not listable) by the capsule's root: see New.
					if err := os.Chmod(p.Dir, 0o711); err != nil {
						return fmt.Errorf("container: %w", err)
					}
					if rec.IDBase == 0 {
						var err error
						if rec.IDBase, err = d.allocIDBase(); err != nil { // issue 11: user namespaces
							return err
						}
					}
				}
				return nil
			},
			// The directory goes last: while it exists, Recover can find
			// the key. removeDir unmounts before it deletes.
			Undo: func(context.Context) error {
				if err := removeDir(p); err != nil {
					return err
				}
				d.freeIDBase(rec.IDBase) // nothing is mounted with it any more
				rec.IDBase = 0
				return nil
			},
		},
		runtime.Step{
			Name:  "network",
			Async: true,
			Do: func(context.Context) (err error) {
				d.net.Label(rec.Key, rec.ID)
				// The capsule's netns is made inside its user namespace
				// (owned by it), so CRIU can checkpoint the capsule.
				var newNetns func(string) error
				if rec.IDBase != 0 {
					newNetns = func(path string) error {
						return newOwnedNetns(rec.IDBase, filepath.Join(p.Dir, usernsFile), path)
					}
				}
				if rec.Pool {
					// Held: no egress until taken; the take of a default
					// create (internet, default policy) only releases it.
					rec.Net, err = d.net.SetupHeld(rec.Key, true, nil, newNetns)
					return err
				}
				rec.Net, err = d.net.SetupWith(rec.Key, rec.Spec.AllowInternet, rec.Spec.Network, newNetns)
				return err
			},
			Undo: func(context.Context) error { return d.teardownNet(rec) },
		},
	)
	if image != nil {
		s.Append(runtime.Step{Name: "image", Do: func(context.Context) error { return image(p.Image()) }})
	}
	s.Append(
		runtime.Step{
			Name: "rootfs",
			Do: func(ctx context.Context) (err error) {
				return d.mountRootfs(ctx, rec, tmpl.Rootfs, filepath.Join(d.cfg.StateDir, "blank"))
			},
			Undo: func(context.Context) error { return rootfs.Unmount(p) },
		},
	)
	if len(rec.Spec.Volumes) > 0 {
		s.Append(d.volumesStep(rec))
	}
	s.Append(
		runtime.Step{Name: "etc", Do: func(context.Context) error { return d.writeEtc(rec, rec.ID) }},
		runtime.Step{Name: "bundle", Do: func(context.Context) error { return d.writeBundle(rec) }},
		runtime.Step{Name: "state", Do: func(context.Context) error { return d.save(rec) }},
	)
	return s
}

// startStep runs envd as the capsule's init; its Undo deletes the runc
// container and the cgroup.
func (d *Driver) startStep(rec *record) runtime.Step {
	return runtime.Step{
		Name: "start",
		Do:   func(ctx context.Context) error { return d.start(ctx, rec) },
		Undo: func(ctx context.Context) error { return d.removeContainer(ctx, rec) },
	}
}

// removeContainer deletes the capsule's runc container and cgroup.
func (d *Driver) removeContainer(ctx context.Context, rec *record) error {
	return errors.Join(d.runcDelete(ctx, rec.Key), d.cg.remove(d.cgroupPath(rec.Key)))
}

// teardownNet frees the capsule's network, also when its setup did not
// complete (no allocation recorded: found by key).
func (d *Driver) teardownNet(rec *record) error {
	a := rec.Net
	if a.Key == "" {
		a = network.Allocation{Key: rec.Key, Index: -1, Netns: d.net.NetnsPath(rec.Key)}
	}
	return d.net.Teardown(a)
}

// mountRootfs mounts the capsule's image and overlay, idmapped to its user
// namespace range if it has one.
func (d *Driver) mountRootfs(ctx context.Context, rec *record, lower, blankDir string) error {
	p := d.paths(rec.Key)
	if rec.IDBase == 0 {
		return rootfs.Mount(ctx, p, lower, rec.Spec.DiskSizeMB, blankDir, nil)
	}
	ns, err := openUserns(rec.IDBase)
	if err != nil {
		return err
	}
	defer unix.Close(ns)
	return rootfs.Mount(ctx, p, lower, rec.Spec.DiskSizeMB, blankDir, nil, rootfs.WithIDMap(ns, rec.IDBase))
}

// writeEtc gives the capsule its /etc/hosts and /etc/hostname (in the
// writable layer), owned by capsule root, and, when the agent runs a DNS
// forwarder, a resolv.conf pointing at it.
func (d *Driver) writeEtc(rec *record, id string) error {
	root, err := os.OpenRoot(d.paths(rec.Key).Root())
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer root.Close()
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n%s\t%s\n", network.InsideAddr, id)
	dnsAddr, dns := d.net.DNSServer(rec.Net)
	err = asCapsuleRoot(rec.IDBase, func() error {
		if err := root.MkdirAll("etc", 0o755); err != nil {
			return err
		}
		if dns {
			// Replace (never follow: an image may ship a symlink) resolv.conf.
			if err := root.Remove("etc/resolv.conf"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			f, err := root.OpenFile("etc/resolv.conf", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			_, werr := fmt.Fprintf(f, "nameserver %s\noptions edns0\n", dnsAddr)
			if err := errors.Join(werr, f.Close()); err != nil {
				return fmt.Errorf("resolv.conf: %w", err)
			}
		}
		if err := root.WriteFile("etc/hosts", []byte(hosts), 0o644); err != nil {
			return err
		}
		return root.WriteFile("etc/hostname", []byte(id+"\n"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("container: write /etc: %w", err)
	}
	return nil
}

func (d *Driver) writeBundle(rec *record) error {
	p := d.paths(rec.Key)
	s := ociSpec(bundleParams{
		Hostname:        rec.ID,
		Rootfs:          p.Root(),
		Envd:            d.cfg.EnvdPath,
		Netns:           rec.Net.Netns,
		CgroupsPath:     d.cgroupPath(rec.Key),
		VCPUs:           rec.Spec.VCPUs,
		MemoryMB:        rec.Spec.MemoryMB,
		PidsLimit:       d.cfg.PidsLimit,
		Env:             rec.Spec.Env,
		IDBase:          rec.IDBase,
		Userns:          usernsPathOf(p.Dir),
		NoSeccomp:       d.cfg.DisableSeccomp,
		SeccompCompat32: d.cfg.SeccompCompat32,
		LXCFS:           d.lxcfsMount(),
		Cpus:            d.capsuleCPUs(rec.Spec.VCPUs),
	})
	s.Mounts = append(s.Mounts, d.volumeOCIMounts(rec)...)
	d.adjustSpec(s)
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
func (d *Driver) release(ctx context.Context, rec *record) { d.releaseHost(ctx, rec, false) }

// releaseHost is release; with keepRecord the capsule's directory stays
// with only its state.json (a capsule paused to disk), so a crash
// anywhere in it leaves a record that Recover finds.
func (d *Driver) releaseHost(ctx context.Context, rec *record, keepRecord bool) {
	var errs []error
	if err := d.runcDelete(ctx, rec.Key); err != nil {
		errs = append(errs, err)
	}
	if err := d.cg.remove(d.cgroupPath(rec.Key)); err != nil {
		errs = append(errs, err)
	}
	if err := d.reapRunsc(ctx, rec); err != nil {
		errs = append(errs, err)
	}
	if err := d.teardownNet(rec); err != nil {
		errs = append(errs, err)
	}
	if keepRecord && rec.Snapshot != nil {
		crashPoint("releasing", rec.Snapshot.ID)
	}
	if err := d.unmountVolumes(rec.Key); err != nil {
		errs = append(errs, err)
	}
	// The directory goes last: while it exists, Recover can find the key.
	if keepRecord {
		if err := emptyDirKeepingRecord(d.paths(rec.Key)); err != nil {
			errs = append(errs, err)
		} else {
			d.freeIDBase(rec.IDBase)
		}
	} else if err := removeDir(d.paths(rec.Key)); err != nil {
		errs = append(errs, err)
	} else {
		d.freeIDBase(rec.IDBase)
	}
	if err := errors.Join(errs...); err != nil {
		d.log.Warn("release capsule", "id", rec.ID, "key", rec.Key, "err", err)
	}
}

func (d *Driver) runc(ctx context.Context, args ...string) ([]byte, error) {
	out, err := d.rtCommand(ctx, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", d.Runtime(), args[0], err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (d *Driver) runcDelete(ctx context.Context, key string) error {
	// runc delete removes its state directory recursively: a rootfs bind
	// mount a killed `runc restore` left there (criu-root) must go first.
	if err := unmountUnder(filepath.Join(d.runcRoot, key)); err != nil {
		return err
	}
	d.thawForDelete(key)
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
	defer d.pools.busy()()
	c, err := d.get(id)
	if err != nil {
		return runtime.Info{}, err
	}
	defer c.mu.Unlock()
	// No Undo: a failed start leaves the capsule created (d.start deletes
	// a runc container that did not run).
	s := &runtime.Steps{Op: OpStart, ID: id, Log: d.log}
	s.Append(runtime.Step{Name: "start", Do: func(ctx context.Context) error { return d.start(ctx, &c.rec) }})
	if err := d.runSteps(ctx, s); err != nil {
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
	if err := d.beforeStart(rec); err != nil {
		return err
	}
	pidFile := filepath.Join(p.Dir, "pid")
	cmd := d.rtCommand(ctx, "run", "--detach", "--bundle", p.Dir, "--pid-file", pidFile, rec.Key)
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
	d.stopLXCFSIfIdle()
	d.releaseRunscRoot()
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
		// runsc cannot always tell about a sandbox killed from outside
		// (the host's OOM killer): its init being gone is enough.
		if (err == nil || d.rt.runsc) && (st.Status == "stopped" || st.Status == "" || d.rt.runsc) {
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
	d.closeSpares()
	d.pools.close(d)
	d.closed.Store(true)
	d.stopLXCFSIfIdle()
	d.releaseRunscRoot()
	d.net.Close()
	if d.scratch != "" {
		_ = os.RemoveAll(d.scratch)
	}
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
