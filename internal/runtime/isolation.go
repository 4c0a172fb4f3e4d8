package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Isolation names: how a capsule is separated from the host and from other
// capsules. A capsule asks for one (Spec.Isolation; "" = the host's
// default) and a host runs one driver per isolation it supports.
const (
	// IsolationContainer: runc, namespaces, cgroups, seccomp, a user
	// namespace (the container driver's default runtime class).
	IsolationContainer = "container"
	// IsolationGVisor: gVisor's runsc, a user-space kernel between the
	// capsule and the host (the container driver's runsc runtime class).
	IsolationGVisor = "gvisor"
	// IsolationMicroVM: a virtual machine (needs KVM).
	IsolationMicroVM = "microvm"
)

// KnownIsolations lists every isolation name, in order of strength.
var KnownIsolations = []string{IsolationContainer, IsolationGVisor, IsolationMicroVM}

// ValidIsolation reports whether name is an isolation name ("" is not).
func ValidIsolation(name string) bool { return slices.Contains(KnownIsolations, name) }

// Isolations is a Driver that holds one driver per isolation and routes
// every call to the driver that runs the capsule: Create, Take and Restore
// by Spec.Isolation ("" = the default isolation), everything else by the
// capsule's ID (remembered from Create, Take, Restore and Recover). The
// host agent holds one Isolations, so a second driver is one line:
//
//	drivers.Register(runtime.IsolationMicroVM, vmDriver)
//
// and an isolation the host cannot offer is recorded with its reason:
//
//	drivers.Unavailable(runtime.IsolationMicroVM, "/dev/kvm is missing")
//
// Optional capabilities (Pauser, Snapshotter, …) are implemented here and
// answer ErrNotSupported for a capsule whose driver lacks them. Capsule IDs
// are unique across the drivers (Create of an ID another driver runs is
// ErrExists).
type Isolations struct {
	def string

	mu          sync.Mutex
	drivers     map[string]Driver
	unavailable map[string]string // isolation -> why this host lacks it
	owner       map[string]string // capsule ID -> isolation
}

var (
	_ Driver            = (*Isolations)(nil)
	_ Pauser            = (*Isolations)(nil)
	_ Snapshotter       = (*Isolations)(nil)
	_ WarmPooler        = (*Isolations)(nil)
	_ WarmPoolReporter  = (*Isolations)(nil)
	_ TemplateExporter  = (*Isolations)(nil)
	_ SnapshotCollector = (*Isolations)(nil)
	_ NetworkUpdater    = (*Isolations)(nil)
	_ MemoryTemplater   = (*Isolations)(nil)
)

// NewIsolations returns a router whose default isolation is def (the one
// Spec.Isolation "" means); register its driver before use.
func NewIsolations(def string) *Isolations {
	return &Isolations{def: def, drivers: map[string]Driver{}, unavailable: map[string]string{}, owner: map[string]string{}}
}

// Register makes d run the capsules of isolation. Call before serving.
func (m *Isolations) Register(isolation string, d Driver) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drivers[isolation] = d
	delete(m.unavailable, isolation)
}

// Unavailable records why this host cannot run isolation (shown in the
// host's capabilities and in the error of a create that asks for it).
func (m *Isolations) Unavailable(isolation, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.drivers[isolation]; !ok {
		m.unavailable[isolation] = reason
	}
}

// Default is the isolation of a Spec that names none.
func (m *Isolations) Default() string { return m.def }

// Supported lists the isolations this host runs, sorted as KnownIsolations.
func (m *Isolations) Supported() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, iso := range KnownIsolations {
		if _, ok := m.drivers[iso]; ok {
			out = append(out, iso)
		}
	}
	for iso := range m.drivers {
		if !slices.Contains(out, iso) {
			out = append(out, iso)
		}
	}
	return out
}

// Missing maps each known isolation this host does not run to the reason.
func (m *Isolations) Missing() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, iso := range KnownIsolations {
		if _, ok := m.drivers[iso]; ok {
			continue
		}
		reason := m.unavailable[iso]
		if reason == "" {
			reason = "no driver for it is configured on this host"
		}
		out[iso] = reason
	}
	return out
}

// IsolationStatus is whether this host runs one isolation: the reason
// when it does not, and for a VM driver whether it uses KVM and its VMM.
type IsolationStatus struct {
	Name      string
	Available bool
	Reason    string
	KVM       bool
	Backend   string
}

// Status lists the isolations this host runs (as Supported), then every
// known one it does not with the reason (as Missing). A driver tells its
// KVM use and VMM with UsesKVM() bool and Backend() string.
func (m *Isolations) Status() []IsolationStatus {
	var out []IsolationStatus
	for _, name := range m.Supported() {
		st := IsolationStatus{Name: name, Available: true}
		if d, ok := m.Driver(name); ok {
			if k, ok := d.(interface{ UsesKVM() bool }); ok {
				st.KVM = k.UsesKVM()
			}
			if b, ok := d.(interface{ Backend() string }); ok {
				st.Backend = b.Backend()
			}
		}
		out = append(out, st)
	}
	missing := m.Missing()
	for _, name := range KnownIsolations {
		if reason, ok := missing[name]; ok {
			out = append(out, IsolationStatus{Name: name, Reason: reason})
		}
	}
	return out
}

// Driver returns the driver of isolation ("" = the default).
func (m *Isolations) Driver(isolation string) (Driver, bool) {
	if isolation == "" {
		isolation = m.def
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.drivers[isolation]
	return d, ok
}

// Isolation returns the isolation of a capsule ("" if unknown).
func (m *Isolations) Isolation(id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.owner[id]
}

// forSpec picks the driver a new capsule of isolation goes to.
func (m *Isolations) forSpec(isolation string) (string, Driver, error) {
	if isolation == "" {
		isolation = m.def
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.drivers[isolation]
	if !ok {
		reason := m.unavailable[isolation]
		if reason == "" {
			reason = "no driver for it is configured on this host"
		}
		if !ValidIsolation(isolation) {
			return "", nil, fmt.Errorf("%w: unknown isolation %q (known: %v)", ErrInvalidSpec, isolation, KnownIsolations)
		}
		return "", nil, fmt.Errorf("isolation %q: %s: %w", isolation, reason, ErrNotSupported)
	}
	return isolation, d, nil
}

// claim records id as isolation's before it is created, so two creates of
// one ID on two drivers cannot both succeed.
func (m *Isolations) claim(id, isolation string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.owner[id]; ok && other != isolation {
		return fmt.Errorf("capsule %s (%s): %w", id, other, ErrExists)
	}
	m.owner[id] = isolation
	return nil
}

func (m *Isolations) release(id, isolation string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.owner[id] == isolation {
		delete(m.owner, id)
	}
}

// byID returns the driver running capsule id.
func (m *Isolations) byID(id string) (Driver, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	iso, ok := m.owner[id]
	if !ok {
		return nil, fmt.Errorf("capsule %s: %w", id, ErrNotFound)
	}
	return m.drivers[iso], nil
}

func (m *Isolations) all() []Driver {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Driver, 0, len(m.drivers))
	for _, iso := range slices.Sorted(maps.Keys(m.drivers)) {
		out = append(out, m.drivers[iso])
	}
	return out
}

func (m *Isolations) tag(info Info, err error, id string) (Info, error) {
	if err == nil {
		info.Isolation = m.Isolation(id)
	}
	return info, err
}

// Name is the default driver's name.
func (m *Isolations) Name() string {
	if d, ok := m.Driver(""); ok {
		return d.Name()
	}
	return "none"
}

// Create implements Driver: the driver of spec.Isolation creates it.
func (m *Isolations) Create(ctx context.Context, spec Spec) (Info, error) {
	iso, d, err := m.forSpec(spec.Isolation)
	if err != nil {
		return Info{}, err
	}
	if _, ok := d.(VolumeMounter); len(spec.Volumes) > 0 && !ok {
		return Info{}, fmt.Errorf("%w: the %s isolation does not mount volumes", ErrNotSupported, iso)
	}
	if err := m.claim(spec.ID, iso); err != nil {
		return Info{}, err
	}
	info, err := d.Create(ctx, spec)
	if err != nil {
		if !errors.Is(err, ErrExists) {
			m.release(spec.ID, iso)
		}
		return Info{}, err
	}
	return m.tag(info, nil, spec.ID)
}

// Start implements Driver.
func (m *Isolations) Start(ctx context.Context, id string) (Info, error) {
	d, err := m.byID(id)
	if err != nil {
		return Info{}, err
	}
	info, err := d.Start(ctx, id)
	return m.tag(info, err, id)
}

// Stop implements Driver.
func (m *Isolations) Stop(ctx context.Context, id string, timeout time.Duration) error {
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	return d.Stop(ctx, id, timeout)
}

// Destroy implements Driver.
func (m *Isolations) Destroy(ctx context.Context, id string) error {
	iso := m.Isolation(id)
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	err = d.Destroy(ctx, id)
	if err == nil || errors.Is(err, ErrNotFound) {
		m.release(id, iso)
	}
	return err
}

// Inspect implements Driver.
func (m *Isolations) Inspect(ctx context.Context, id string) (Info, error) {
	d, err := m.byID(id)
	if err != nil {
		return Info{}, err
	}
	info, err := d.Inspect(ctx, id)
	return m.tag(info, err, id)
}

// List implements Driver: every driver's capsules.
func (m *Isolations) List(ctx context.Context) ([]Info, error) {
	var out []Info
	for _, d := range m.all() {
		infos, err := d.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			info.Isolation = m.Isolation(info.ID)
			out = append(out, info)
		}
	}
	return out, nil
}

// Stats implements Driver.
func (m *Isolations) Stats(ctx context.Context, id string) (Stats, error) {
	d, err := m.byID(id)
	if err != nil {
		return Stats{}, err
	}
	return d.Stats(ctx, id)
}

// Recover implements Driver: every driver recovers; the capsules each
// adopts are routed to it from then on.
func (m *Isolations) Recover(ctx context.Context) ([]Info, error) {
	m.mu.Lock()
	isos := slices.Sorted(maps.Keys(m.drivers))
	m.mu.Unlock()
	var out []Info
	var errs []error
	for _, iso := range isos {
		d, _ := m.Driver(iso)
		infos, err := d.Recover(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", iso, err))
		}
		for _, info := range infos {
			if cerr := m.claim(info.ID, iso); cerr != nil {
				errs = append(errs, cerr)
				continue
			}
			info.Isolation = iso
			out = append(out, info)
		}
	}
	return out, errors.Join(errs...)
}

// Close implements Driver: closes every driver.
func (m *Isolations) Close() error {
	var errs []error
	for _, d := range m.all() {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}

func notSupported(d Driver, what string) error {
	return fmt.Errorf("the %s driver cannot %s: %w", d.Name(), what, ErrNotSupported)
}

// Pause implements Pauser.
func (m *Isolations) Pause(ctx context.Context, id string) error {
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	p, ok := d.(Pauser)
	if !ok {
		return notSupported(d, "pause")
	}
	return p.Pause(ctx, id)
}

// Resume implements Pauser.
func (m *Isolations) Resume(ctx context.Context, id string) error {
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	p, ok := d.(Pauser)
	if !ok {
		return notSupported(d, "resume")
	}
	return p.Resume(ctx, id)
}

// Snapshot implements Snapshotter; the snapshot's Spec names its isolation.
func (m *Isolations) Snapshot(ctx context.Context, id string) (SnapshotInfo, error) {
	d, err := m.byID(id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	s, ok := d.(Snapshotter)
	if !ok {
		return SnapshotInfo{}, notSupported(d, "snapshot")
	}
	snap, err := s.Snapshot(ctx, id)
	if err == nil {
		snap.Spec.Isolation = m.Isolation(id)
	}
	return snap, err
}

// Adopt implements Mover: the driver of snap.Spec.Isolation adopts it.
func (m *Isolations) Adopt(ctx context.Context, snap SnapshotInfo) (Info, error) {
	iso, d, err := m.forSpec(snap.Spec.Isolation)
	if err != nil {
		return Info{}, err
	}
	mv, ok := d.(Mover)
	if !ok {
		return Info{}, notSupported(d, "adopt a capsule from another host")
	}
	if err := m.claim(snap.CapsuleID, iso); err != nil {
		return Info{}, err
	}
	info, err := mv.Adopt(ctx, snap)
	if err != nil {
		if !errors.Is(err, ErrExists) {
			m.release(snap.CapsuleID, iso)
		}
		return Info{}, err
	}
	return m.tag(info, nil, snap.CapsuleID)
}

// Release implements Mover: the capsule's driver forgets it.
func (m *Isolations) Release(ctx context.Context, id string) error {
	iso := m.Isolation(id)
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	mv, ok := d.(Mover)
	if !ok {
		return notSupported(d, "release a capsule")
	}
	err = mv.Release(ctx, id)
	if err == nil || errors.Is(err, ErrNotFound) {
		m.release(id, iso)
	}
	return err
}

// Restore implements Snapshotter: the driver of snap.Spec.Isolation ("" =
// the default) restores it.
func (m *Isolations) Restore(ctx context.Context, snap SnapshotInfo) (Info, error) {
	iso, d, err := m.forSpec(snap.Spec.Isolation)
	if err != nil {
		return Info{}, err
	}
	s, ok := d.(Snapshotter)
	if !ok {
		return Info{}, notSupported(d, "restore")
	}
	// A snapshotted capsule stays known to its driver until restored.
	if other := m.Isolation(snap.CapsuleID); other != "" && other != iso {
		return Info{}, fmt.Errorf("restore capsule %s: it is a %s capsule here, the snapshot says %s: %w", snap.CapsuleID, other, iso, ErrExists)
	}
	if err := m.claim(snap.CapsuleID, iso); err != nil {
		return Info{}, err
	}
	info, err := s.Restore(ctx, snap)
	if err != nil {
		if _, ierr := d.Inspect(context.WithoutCancel(ctx), snap.CapsuleID); errors.Is(ierr, ErrNotFound) {
			m.release(snap.CapsuleID, iso)
		}
		return Info{}, err
	}
	return m.tag(info, nil, snap.CapsuleID)
}

// MemorySnapshots implements Snapshotter for the default driver.
func (m *Isolations) MemorySnapshots() bool {
	d, ok := m.Driver("")
	if !ok {
		return false
	}
	s, ok := d.(Snapshotter)
	return ok && s.MemorySnapshots()
}

// SetWarmPool implements WarmPooler for the default driver.
func (m *Isolations) SetWarmPool(template string, n int) {
	if d, ok := m.Driver(""); ok {
		if wp, ok := d.(WarmPooler); ok {
			wp.SetWarmPool(template, n)
		}
	}
}

// WarmPools implements WarmPoolReporter: the pools of every driver.
func (m *Isolations) WarmPools() []WarmPoolStatus {
	var out []WarmPoolStatus
	for _, d := range m.all() {
		if r, ok := d.(WarmPoolReporter); ok {
			out = append(out, r.WarmPools()...)
		}
	}
	return out
}

// Take implements WarmPooler: the pool of spec.Isolation's driver.
func (m *Isolations) Take(ctx context.Context, spec Spec) (Info, error) {
	iso, d, err := m.forSpec(spec.Isolation)
	if err != nil {
		return Info{}, err
	}
	wp, ok := d.(WarmPooler)
	if !ok {
		return Info{}, fmt.Errorf("take %s: %w", spec.Template, ErrPoolEmpty)
	}
	if err := m.claim(spec.ID, iso); err != nil {
		return Info{}, err
	}
	info, err := wp.Take(ctx, spec)
	if err != nil {
		if !errors.Is(err, ErrExists) {
			m.release(spec.ID, iso)
		}
		return Info{}, err
	}
	return m.tag(info, nil, spec.ID)
}

// ExportTemplate implements TemplateExporter.
func (m *Isolations) ExportTemplate(ctx context.Context, id, dst string) error {
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	e, ok := d.(TemplateExporter)
	if !ok {
		return notSupported(d, "export a capsule's filesystem")
	}
	return e.ExportTemplate(ctx, id, dst)
}

// CollectSnapshots implements SnapshotCollector: every driver that
// collects, summed.
func (m *Isolations) CollectSnapshots(ctx context.Context, minAge time.Duration) (SnapshotGCStats, error) {
	var out SnapshotGCStats
	var errs []error
	for _, d := range m.all() {
		c, ok := d.(SnapshotCollector)
		if !ok {
			continue
		}
		st, err := c.CollectSnapshots(ctx, minAge)
		errs = append(errs, err)
		out.Headers += st.Headers
		out.LiveBuilds += st.LiveBuilds
		out.Deleted += st.Deleted
		out.DeletedBytes += st.DeletedBytes
		out.TempRemoved += st.TempRemoved
	}
	return out, errors.Join(errs...)
}

// UpdateNetwork implements NetworkUpdater.
func (m *Isolations) UpdateNetwork(ctx context.Context, id string, allowInternet bool, policy *NetworkPolicy) error {
	d, err := m.byID(id)
	if err != nil {
		return err
	}
	nu, ok := d.(NetworkUpdater)
	if !ok {
		return notSupported(d, "update a capsule's network")
	}
	return nu.UpdateNetwork(ctx, id, allowInternet, policy)
}

// MemoryTemplates implements MemoryTemplater for the default driver.
func (m *Isolations) MemoryTemplates() (bool, string) {
	d, ok := m.Driver("")
	if !ok {
		return false, "no driver for the default isolation"
	}
	mt, ok := d.(MemoryTemplater)
	if !ok {
		return false, "the " + d.Name() + " driver cannot restore a template's memory"
	}
	return mt.MemoryTemplates()
}

// ExportMemory implements MemoryTemplater: the capsule's driver exports.
func (m *Isolations) ExportMemory(ctx context.Context, id, dst string) (map[string]string, error) {
	d, err := m.byID(id)
	if err != nil {
		return nil, err
	}
	mt, ok := d.(MemoryTemplater)
	if !ok {
		return nil, notSupported(d, "export a capsule's memory")
	}
	return mt.ExportMemory(ctx, id, dst)
}

// CreateFromMemory implements MemoryTemplater: the driver of
// spec.Isolation restores it (ErrNotSupported when that driver cannot:
// the caller then boots the capsule).
func (m *Isolations) CreateFromMemory(ctx context.Context, spec Spec, archive string, md map[string]string) (Info, error) {
	iso, d, err := m.forSpec(spec.Isolation)
	if err != nil {
		return Info{}, err
	}
	mt, ok := d.(MemoryTemplater)
	if !ok {
		return Info{}, notSupported(d, "restore a template's memory")
	}
	if err := m.claim(spec.ID, iso); err != nil {
		return Info{}, err
	}
	info, err := mt.CreateFromMemory(ctx, spec, archive, md)
	if err != nil {
		if !errors.Is(err, ErrExists) {
			m.release(spec.ID, iso)
		}
		return Info{}, err
	}
	return m.tag(info, nil, spec.ID)
}

// volumes is the container isolation's driver, which mounts volumes.
func (m *Isolations) volumes() (VolumeMounter, error) {
	d, ok := m.Driver(IsolationContainer)
	if vm, isVM := d.(VolumeMounter); ok && isVM {
		return vm, nil
	}
	return nil, fmt.Errorf("%w: this host runs no container isolation for volumes", ErrNotSupported)
}

// PublishVolume implements VolumeMounter (the container driver's).
func (m *Isolations) PublishVolume(ctx context.Context, name, path string) error {
	vm, err := m.volumes()
	if err != nil {
		return err
	}
	return vm.PublishVolume(ctx, name, path)
}

// FetchVolume implements VolumeMounter (the container driver's).
func (m *Isolations) FetchVolume(ctx context.Context, name, path string) error {
	vm, err := m.volumes()
	if err != nil {
		return err
	}
	return vm.FetchVolume(ctx, name, path)
}

// DeleteVolume implements VolumeMounter (the container driver's).
func (m *Isolations) DeleteVolume(ctx context.Context, name string) error {
	vm, err := m.volumes()
	if err != nil {
		return err
	}
	return vm.DeleteVolume(ctx, name)
}

// CRIUUnavailableReason passes on the default driver's reason why memory
// snapshots are off ("" when on or when it gives none).
func (m *Isolations) CRIUUnavailableReason() string {
	if d, ok := m.Driver(""); ok {
		if r, ok := d.(interface{ CRIUUnavailableReason() string }); ok {
			return r.CRIUUnavailableReason()
		}
	}
	return ""
}
