// Package runtime defines the contract between the host agent and the things
// that actually run capsules (runtime drivers): the Driver interface, the
// optional capability interfaces a driver may also implement (Pauser,
// Snapshotter, WarmPooler, TemplateExporter, SnapshotCollector,
// NetworkUpdater), the capsule value types, the typed errors, and Steps,
// the named-step lists drivers run their create paths as.
//
// The shape follows Nomad's task drivers: a small mandatory core (Create,
// Start, Stop, Destroy, Inspect, List, Stats, Recover) plus capabilities that
// callers discover with a type assertion. Every driver must pass the
// conformance suite in runtime/runtimetest.
//
// Invariants:
//   - A capsule ID is unique per driver; Create with a live ID returns ErrExists.
//   - Destroy is idempotent for a known ID and frees every host resource the
//     capsule held (processes, mounts, network namespaces, firewall rules,
//     cgroups, loop devices, state files). Destroy of an unknown ID returns
//     ErrNotFound.
//   - Recover, called once when a driver starts, re-adopts every capsule whose
//     on-disk state and processes are intact and removes every trace of the rest.
//   - This package imports no transport, SQL or driver-specific package.
package runtime

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"time"
)

// EnvdPort is the TCP port envd listens on inside every capsule.
const EnvdPort = 49983

// State is the life-cycle state of a capsule as seen by its driver.
type State string

// Capsule states.
const (
	// StateCreated: resources allocated (rootfs, network), no process yet.
	StateCreated State = "created"
	// StateRunning: envd (PID 1) is running.
	StateRunning State = "running"
	// StatePaused: processes frozen in place, memory kept (warm pause).
	StatePaused State = "paused"
	// StateStopped: the process tree has exited; resources still held.
	StateStopped State = "stopped"
	// StateSnapshotted: suspended to disk; no processes and no memory on the
	// host; Restore brings it back.
	StateSnapshotted State = "snapshotted"
)

// Spec is what a caller asks for when creating a capsule.
type Spec struct {
	// ID is the capsule ID (e.g. "cl-…"); also the hostname inside.
	ID string
	// Template names the template whose rootfs the capsule starts from.
	Template string
	// VCPUs is the CPU limit in whole CPUs; 0 means the driver default.
	VCPUs int
	// MemoryMB is the memory limit; 0 means the driver default.
	MemoryMB int
	// DiskSizeMB is the writable disk size; 0 means the driver default. A
	// driver never makes it smaller than the template's own rootfs.
	DiskSizeMB int
	// Env is added to the environment of envd (and so of processes it starts).
	Env map[string]string
	// AllowInternet lets the capsule reach public addresses. Private ranges,
	// the host and other capsules stay unreachable either way.
	AllowInternet bool
	// Network is the egress policy and rate limits (nil = defaults). With
	// AllowInternet false the capsule has no egress at all and only the
	// rate limits of Network apply.
	Network *NetworkPolicy
	// Labels are opaque key/values kept with the capsule (e.g. team ID).
	Labels map[string]string
	// Isolation is how the capsule is isolated (IsolationContainer,
	// IsolationGVisor, IsolationMicroVM; "" = the host's default). Only
	// Isolations (isolation.go) reads it: it picks the driver.
	Isolation string `json:",omitempty"`
	// Volumes are mounted volume file systems to bind into the capsule
	// (docs/VOLUMES.md); only drivers that implement VolumeMounter take
	// them (others refuse a spec with volumes: ErrNotSupported).
	Volumes []VolumeMount `json:",omitempty"`
}

// VolumeMount binds the host directory Source (the root of a mounted
// volume, its on-disk ids being capsule ids) at Path inside the capsule.
type VolumeMount struct {
	VolumeID string
	Source   string
	Path     string
	ReadOnly bool `json:",omitempty"`
}

// VolumeMounter is implemented by drivers whose capsules mount volumes
// (Spec.Volumes). It also moves volume images through the driver's
// snapshot store (the one pause to disk uses, so a shared
// --snapshot-store lets volumes travel between hosts).
type VolumeMounter interface {
	// PublishVolume stores the image file at path as name (zero blocks
	// are not stored); the previous content of name is replaced at once
	// when the upload is complete, never partly.
	PublishVolume(ctx context.Context, name, path string) error
	// FetchVolume writes the image called name to a new sparse file at
	// path; ErrNotFound when the store has none.
	FetchVolume(ctx context.Context, name, path string) error
	// DeleteVolume removes the image called name (absent: no error).
	DeleteVolume(ctx context.Context, name string) error
}

// Info describes one capsule.
type Info struct {
	ID         string
	Template   string
	State      State
	VCPUs      int
	MemoryMB   int
	DiskSizeMB int
	// IP is the capsule's address; envd answers at IP:EnvdPort from the host.
	IP            netip.Addr
	AllowInternet bool
	Network       *NetworkPolicy
	Labels        map[string]string
	CreatedAt     time.Time
	// StartedAt is the last time the capsule's processes were (re)started.
	StartedAt time.Time
	// MemoryKept reports, after the last Restore, whether process memory
	// survived (false means the capsule booted again with its files intact).
	MemoryKept bool
	// PID is the host PID of the capsule's init (envd), 0 when not running.
	PID int
	// Isolation is the capsule's isolation (set by Isolations).
	Isolation string
}

// EnvdAddr returns "ip:49983" for the capsule's envd.
func (i Info) EnvdAddr() string {
	return netip.AddrPortFrom(i.IP, EnvdPort).String()
}

// Stats is a host-side resource sample of one capsule.
type Stats struct {
	Time time.Time
	// CPUUsage is the cumulative CPU time consumed.
	CPUUsage time.Duration
	// MemoryBytes is the host-side memory charged to the capsule's cgroup
	// (for guest-side use, ask envd's /metrics).
	MemoryBytes uint64
	// MemoryLimitBytes is the memory limit in force.
	MemoryLimitBytes uint64
	// PIDs is the number of tasks in the capsule.
	PIDs uint64
	// DiskUsedBytes / DiskTotalBytes describe the writable layer.
	DiskUsedBytes  uint64
	DiskTotalBytes uint64
	// NetBytesIn / NetBytesOut count what the capsule received and sent;
	// NetDroppedPackets the packets of new outbound connections its
	// network policy dropped.
	NetBytesIn, NetBytesOut, NetDroppedPackets uint64
}

// Driver runs capsules. Implementations are safe for concurrent use; calls
// on different capsules proceed in parallel, calls on one capsule serialize.
type Driver interface {
	// Name is the driver's short name ("container", "firecracker").
	Name() string
	// Create allocates a capsule's resources (rootfs, network, limits) and
	// returns it in StateCreated. On error nothing is left behind.
	Create(ctx context.Context, spec Spec) (Info, error)
	// Start starts envd as the capsule's init; on return the process runs
	// (envd may still be binding its port: poll /health).
	Start(ctx context.Context, id string) (Info, error)
	// Stop stops the capsule's processes (SIGTERM, then SIGKILL after
	// timeout) and keeps its resources; Start may run it again.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	// Destroy stops the capsule if needed and frees all its resources.
	Destroy(ctx context.Context, id string) error
	// Inspect returns the capsule's current info.
	Inspect(ctx context.Context, id string) (Info, error)
	// List returns every capsule the driver holds.
	List(ctx context.Context) ([]Info, error)
	// Stats samples the capsule's host-side resource use.
	Stats(ctx context.Context, id string) (Stats, error)
	// Recover re-adopts capsules left by a previous instance of the driver
	// (agent restart, even after kill -9) and cleans up the ones that cannot
	// be re-adopted. It returns the re-adopted capsules.
	Recover(ctx context.Context) ([]Info, error)
	// Close releases the driver's own resources (background goroutines,
	// warm pools). Capsules keep running; a later driver can Recover them.
	Close() error
}

// Pauser is implemented by drivers that can freeze a capsule in place with
// its memory kept (warm pause: cgroup freezer, VM pause).
type Pauser interface {
	// Pause freezes all processes of a running capsule.
	Pause(ctx context.Context, id string) error
	// Resume thaws a paused capsule. The caller re-/inits envd (clock,
	// connections) afterwards.
	Resume(ctx context.Context, id string) error
}

// CommittedSnapshots is implemented by drivers that can say which snapshot
// a capsule's last pause to disk committed, for an agent that crashed
// before it recorded the snapshot itself.
type CommittedSnapshots interface {
	CommittedSnapshot(id string) (SnapshotInfo, bool)
}

// SnapshotStore is where a Snapshotter puts and finds snapshot artifacts
// (rootfs archives, memory images). Keys are slash-separated names chosen
// by the driver, unique per snapshot.
type SnapshotStore interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, key string) error
}

// SnapshotInfo describes a stored snapshot of one capsule.
type SnapshotInfo struct {
	// ID names the snapshot in the store; Restore takes it.
	ID string
	// CapsuleID and Template are those of the capsule it was taken from.
	CapsuleID string
	Template  string
	// MemoryKept reports whether process memory is in the snapshot.
	MemoryKept bool
	// Spec is the capsule's spec at snapshot time.
	Spec      Spec
	CreatedAt time.Time
	// Keys lists the store keys that make up the snapshot.
	Keys []string
}

// Snapshotter is implemented by drivers that can suspend a capsule to disk
// (pause to disk) and bring it back, on this host or another.
type Snapshotter interface {
	// Snapshot writes the capsule's writable filesystem (and memory where the
	// host supports it) to the store and releases its host resources except
	// the state needed to Restore. The capsule ends in StateSnapshotted.
	Snapshot(ctx context.Context, id string) (SnapshotInfo, error)
	// Restore brings a snapshotted capsule back to StateRunning under its
	// original ID. Info.MemoryKept tells whether memory survived. A failed
	// Restore destroys the capsule (no zombie); the cleanup does not depend
	// on ctx.
	Restore(ctx context.Context, snap SnapshotInfo) (Info, error)
	// MemorySnapshots reports whether Snapshot keeps memory on this host
	// (detected once at driver start).
	MemorySnapshots() bool
}

// Mover is implemented by drivers whose snapshots another host can
// restore (a snapshot store every host shares): a capsule snapshotted on
// one host moves to another (docs/FLEET.md, "Moving capsules").
type Mover interface {
	// Adopt records here a capsule another host snapshotted, in
	// StateSnapshotted, from its SnapshotInfo (the snapshot must be in
	// the store): Restore brings it back, Destroy deletes it and its
	// snapshot, Recover finds it after a restart. ErrExists when the
	// driver holds the capsule already.
	Adopt(ctx context.Context, snap SnapshotInfo) (Info, error)
	// Release removes a capsule that another host owns from this host
	// (its processes and host resources, in any state) but leaves its
	// snapshot objects in the store alone — unlike Destroy, which deletes
	// them.
	Release(ctx context.Context, id string) error
}

// WarmPooler is implemented by drivers that keep started-and-frozen capsules
// per template to cut create latency.
type WarmPooler interface {
	// SetWarmPool sets how many warm capsules to keep for template (0 drains).
	SetWarmPool(template string, n int)
	// Take returns a running capsule from the template's pool, thawed and
	// renamed to spec.ID, or ErrPoolEmpty. The caller /inits envd with
	// the new identity and spec.Env. Only spec fields that the pool's
	// capsules match (template, limits, network policy) are honoured;
	// Take returns ErrPoolMismatch if spec asks for other limits.
	Take(ctx context.Context, spec Spec) (Info, error)
}

// SnapshotCollector is implemented by drivers that keep published snapshot
// data (block images) that can become garbage: data no header references
// any more (a superseded generation, an interrupted publish, a crash between
// a data upload and its header), and temp files of interrupted writes.
// The host agent calls it at start and then periodically.
type SnapshotCollector interface {
	// CollectSnapshots deletes unreferenced snapshot data and temp files
	// older than minAge (younger data may belong to a publish in progress,
	// possibly on another host). It deletes nothing if any header cannot
	// be read.
	CollectSnapshots(ctx context.Context, minAge time.Duration) (SnapshotGCStats, error)
}

// SnapshotGCStats reports one collection.
type SnapshotGCStats struct {
	Headers      int   // headers read (each marks its builds live)
	LiveBuilds   int   // builds some header references
	Deleted      int   // builds deleted
	DeletedBytes int64 // bytes freed
	TempRemoved  int   // temp files of interrupted writes removed
}

// TemplateExporter is implemented by drivers that can archive a capsule's
// filesystem so that it becomes a new template (snapshot to template).
type TemplateExporter interface {
	// ExportTemplate writes the root filesystem of a running or paused
	// capsule to the file dst (created or truncated) as a tar archive with
	// numeric owners, xattrs, ACLs and sparse files, the form
	// template.Store.ImportTarball reads. Only the capsule's own root file
	// system is archived: what is mounted over it (/proc, /sys, /dev,
	// tmpfs mounts, files the driver bind-mounts such as envd) is left
	// out. The capsule keeps running; for a
	// consistent copy the caller pauses it first (Pauser). A capsule in
	// another state gives ErrInvalidState.
	ExportTemplate(ctx context.Context, id, dst string) error
}

// MemoryTemplater is implemented by drivers that can keep a running
// capsule's processes in a template (snapshot to template with memory) and
// create capsules from such a template with the processes already running.
// MemoryTemplates reports whether it works on this host now (the container
// driver: a working CRIU, and no user namespaces until CRIU can checkpoint
// them), with the reason when it does not.
type MemoryTemplater interface {
	MemoryTemplates() (ok bool, reason string)
	// ExportMemory checkpoints the processes of running capsule id into
	// the archive dst (created or truncated) and leaves them running. The
	// metadata returned is what CreateFromMemory needs besides the archive.
	ExportMemory(ctx context.Context, id, dst string) (map[string]string, error)
	// CreateFromMemory creates and starts capsule spec, whose template
	// files are on this host, with its processes restored from archive
	// (as ExportMemory wrote it) instead of booting envd. A failure leaves
	// nothing behind: the caller may then Create the capsule normally.
	CreateFromMemory(ctx context.Context, spec Spec, archive string, md map[string]string) (Info, error)
}

// NetworkUpdater is implemented by drivers that change a running capsule's
// network policy in place. Established connections the new policy still
// allows keep flowing; new connections follow the new policy at once.
// An invalid policy returns an ErrInvalidSpec error and leaves the old
// policy in force.
type NetworkUpdater interface {
	UpdateNetwork(ctx context.Context, id string, allowInternet bool, policy *NetworkPolicy) error
}

// Typed errors. Drivers wrap them; callers test with errors.Is.
var (
	ErrNotFound     = errors.New("capsule not found")
	ErrExists       = errors.New("capsule already exists")
	ErrInvalidState = errors.New("capsule is not in a state that allows this")
	ErrInvalidSpec  = errors.New("invalid capsule spec")
	ErrNoTemplate   = errors.New("template not found")
	ErrPoolEmpty    = errors.New("warm pool empty")
	ErrPoolMismatch = errors.New("spec does not match warm pool")
	ErrNotSupported = errors.New("not supported by this driver")
)
