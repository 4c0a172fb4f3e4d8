// Package hostagent is the host agent: it runs capsules through a runtime
// driver and serves the control plane over Connect RPC (HTTP/1.1). It owns
// the capsule life cycle around the driver (envd readiness and /init,
// prepare-before-pause, re-init after resume), the per-capsule envd
// clients, metrics samplers, the TTL reaper, the on-disk agent state and
// the capsule port proxy.
//
// Invariants:
//   - Life-cycle operations on one capsule (create, pause, resume,
//     destroy, snapshot) are serialized by a per-capsule lock; data-plane
//     calls (exec, files, processes) only need the capsule to be running.
//   - Every capsule the agent reports as created has a state file in
//     <StateDir>/capsules, written atomically (rename) before the call that
//     changed it returns; after a crash, New re-adopts what the driver
//     recovers and has a state file for, and destroys the rest (a create
//     that never finished included: its file is written only once it runs).
//   - envd's access token is random per capsule, kept in the state file,
//     and sent on every envd call; /init is sent after create, after every
//     warm resume and after every restore, always with the template id.
//   - A metrics sampler runs exactly while its capsule is running; pause and
//     destroy stop it before returning.
//   - A failed resume destroys the capsule with a context that is not the
//     caller's, so a cancelled caller never causes (or blocks) the cleanup.
package hostagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/hostagent/metrics"
	"github.com/wrenn-dev/wrenn/internal/hostagent/portproxy"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/steptrace"
	"github.com/wrenn-dev/wrenn/internal/template"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Config configures an Agent. Zero values take the documented defaults.
type Config struct {
	// Driver runs the capsules. Required.
	Driver runtime.Driver
	// StateDir holds the agent's own state (capsules/<id>.json). Required.
	StateDir string
	// Templates, when set, is where CreateSnapshot stores new templates.
	Templates *template.Store
	// SharedTemplates, when set, is the template store every host shares
	// (its Local must be Templates): CreateSnapshot publishes new templates
	// there, and a create naming a template this host lacks fetches it
	// from there once (docs/TEMPLATES.md).
	SharedTemplates *template.Shared
	// DefaultTemplate is used when a create names none (default "base").
	DefaultTemplate string
	// DefaultTimeout is a capsule's TTL when a create gives 0 (default 300 s).
	DefaultTimeout time.Duration
	// ReadyTimeout bounds waiting for envd's /health after start (default 30 s).
	ReadyTimeout time.Duration
	// InitTimeout bounds the /init call (default 10 s).
	InitTimeout time.Duration
	// PrepareTimeout bounds /snapshot/prepare before a pause (default 30 s).
	PrepareTimeout time.Duration
	// ResumeTimeout bounds a resume, which runs on a context detached from
	// the caller's (default 5 min).
	ResumeTimeout time.Duration
	// HealthInterval is the /health poll period while waiting (default 5 ms).
	HealthInterval time.Duration
	// SampleInterval is the metrics sampling period (default 1 s).
	SampleInterval time.Duration
	// EnvdUnresponsiveAfter is how many metrics samples in a row of a
	// running capsule may fail before the capsule is reported in state
	// ERROR with a reason (envd stopped or starved; default 10, so 10 s at
	// the default SampleInterval). A later sample that succeeds clears it.
	EnvdUnresponsiveAfter int
	// MetricTiers are the ring buffers (default metrics.DefaultTiers).
	MetricTiers []metrics.Tier
	// ReapInterval is how often the TTL reaper looks (default 1 s).
	ReapInterval time.Duration
	// SnapshotGCInterval is how often the agent sweeps build data no
	// snapshot header references from the driver's snapshot store (drivers
	// that expose one: runtime.SnapshotCollector). Default 10 min; negative
	// disables the periodic sweep. A sweep also runs once at start.
	SnapshotGCInterval time.Duration
	// SnapshotGCMinAge keeps unreferenced data younger than this: a publish
	// (here or on another host sharing the store) uploads its data before
	// its header, and a pause diffing against a parent reads that parent
	// for as long as the pause takes. Default 1 hour.
	SnapshotGCMinAge time.Duration
	// SharedSnapshotIsolations lists the isolations whose snapshots are in
	// a store every host shares (--snapshot-store s3://…): their capsules,
	// paused to disk, can move to another host (move.go).
	SharedSnapshotIsolations []string
	// WarmPools asks a driver that implements runtime.WarmPooler to keep
	// this many started-and-frozen capsules per template.
	WarmPools map[string]int
	// Secret is the bearer secret the control plane sends. Empty disables
	// authentication (tests, single-box setups on loopback only).
	Secret string
	// Version is reported by GetHostInfo.
	Version string
	// CPUOvercommit, MemoryOvercommit and DiskOvercommit are the ratios
	// the control plane may place capsules by on this host, reported by
	// GetHostInfo (0: the control plane's defaults).
	CPUOvercommit, MemoryOvercommit, DiskOvercommit float64
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) fill() error {
	if c.Driver == nil {
		return errors.New("hostagent: Config.Driver is required")
	}
	if c.StateDir == "" {
		return errors.New("hostagent: Config.StateDir is required")
	}
	if c.DefaultTemplate == "" {
		c.DefaultTemplate = limits.Defaults.Template
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DefaultTimeout, time.Duration(limits.Defaults.TimeoutSec)*time.Second)
	def(&c.ReadyTimeout, 30*time.Second)
	def(&c.InitTimeout, 10*time.Second)
	def(&c.PrepareTimeout, 30*time.Second)
	def(&c.ResumeTimeout, 5*time.Minute)
	def(&c.HealthInterval, 5*time.Millisecond)
	def(&c.SampleInterval, time.Second)
	if c.EnvdUnresponsiveAfter <= 0 {
		c.EnvdUnresponsiveAfter = 10
	}
	def(&c.ReapInterval, time.Second)
	if c.SnapshotGCInterval == 0 {
		c.SnapshotGCInterval = 10 * time.Minute
	}
	def(&c.SnapshotGCMinAge, time.Hour)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return nil
}

// Agent runs capsules on this host.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	driver runtime.Driver
	state  stateDir
	proxy  *portproxy.Proxy

	mu       sync.Mutex
	caps     map[string]*capsule
	draining bool // warm pools emptied for a drain (move.go)

	bgCancel  context.CancelFunc
	bgWG      sync.WaitGroup
	closed    sync.Once
	started   time.Time
	teardowns teardowns // driver destroys running after their answer (teardown.go)
	vols      *volumes  // volumes held on this host (volumes.go)
}

// capsule is the agent's live view of one capsule.
type capsule struct {
	op sync.Mutex // serializes life-cycle operations

	mu     sync.Mutex // guards the fields below
	rec    record
	info   runtime.Info
	envd   *envdclient.Client
	gone   bool
	pooled bool // came from the warm pool
	// fromMemory: restored from a memory template (its START process, if
	// any, is already running).
	fromMemory bool
	series     *metrics.Series
	sampler    *metrics.Sampler

	// envdFailures counts metrics samples in a row that envd did not
	// answer; errReason is set once there are EnvdUnresponsiveAfter of
	// them (the capsule is then reported as ERROR) and cleared by the next
	// answer or a new start (startSampler).
	envdFailures int
	errReason    string
}

// errorReason returns why a running capsule is reported in state ERROR
// ("" when it is not).
func (c *capsule) errorReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errReason
}

// envdAnswered records the outcome of one metrics sample.
func (a *Agent) envdAnswered(c *capsule, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if c.errReason != "" {
			a.log.Info("envd answers again", "capsule_id", c.rec.ID)
		}
		c.envdFailures, c.errReason = 0, ""
		return
	}
	c.envdFailures++
	if c.envdFailures >= a.cfg.EnvdUnresponsiveAfter && c.errReason == "" {
		c.errReason = fmt.Sprintf("envd unresponsive: %d health probes in a row failed (last: %v)", c.envdFailures, err)
		a.log.Warn("capsule in error: envd unresponsive", "capsule_id", c.rec.ID, "failures", c.envdFailures, "err", err)
	}
}

func (c *capsule) snapshot() (record, runtime.Info, *envdclient.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec, c.info, c.envd
}

// New builds an agent: it re-adopts the capsules the driver recovers and
// the agent has state for, destroys the others, and starts the TTL reaper.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.StateDir, "capsules")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("hostagent: state dir: %w", err)
	}
	a := &Agent{
		started: time.Now(),
		cfg:     cfg,
		log:     cfg.Logger.With("component", "hostagent"),
		driver:  cfg.Driver,
		state:   stateDir{dir: dir},
		caps:    map[string]*capsule{},
	}
	a.proxy = portproxy.New(portproxy.Config{Resolve: a.resolveIP, Logger: a.log})
	a.vols = &volumes{dir: filepath.Join(cfg.StateDir, "volumes"), log: a.log, vols: map[string]*volume{}}
	if vm, ok := cfg.Driver.(runtime.VolumeMounter); ok {
		a.vols.move = vm
	}
	if err := os.MkdirAll(a.vols.dir, 0o700); err != nil {
		return nil, fmt.Errorf("hostagent: volumes dir: %w", err)
	}
	if err := a.recover(ctx); err != nil {
		return nil, err
	}
	a.vols.recover(ctx, func(id string) bool { _, err := a.lookup(id); return err == nil })
	a.removeTemplateTrash()
	if len(cfg.WarmPools) > 0 {
		wp, ok := cfg.Driver.(runtime.WarmPooler)
		if !ok {
			return nil, fmt.Errorf("hostagent: the %s driver has no warm pools: %w", cfg.Driver.Name(), runtime.ErrNotSupported)
		}
		for tmpl, n := range cfg.WarmPools {
			wp.SetWarmPool(tmpl, n)
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	a.bgCancel = cancel
	a.bgWG.Go(func() { a.reaper(bg) })
	if sc, ok := cfg.Driver.(runtime.SnapshotCollector); ok && cfg.SnapshotGCInterval > 0 {
		a.bgWG.Go(func() { a.snapshotGC(bg, sc) })
	}
	return a, nil
}

// Close stops the agent's goroutines (samplers, reaper) and idle
// connections. Capsules keep running; a later agent re-adopts them.
func (a *Agent) Close() error {
	a.closed.Do(func() {
		a.bgCancel()
		a.bgWG.Wait()
		// Teardowns started before Close finish first: a driver closed
		// under them would leave their host objects behind.
		a.teardowns.wg.Wait()
		a.mu.Lock()
		caps := make([]*capsule, 0, len(a.caps))
		for _, c := range a.caps {
			caps = append(caps, c)
		}
		a.mu.Unlock()
		for _, c := range caps {
			a.stopSampler(c)
			_, _, cl := c.snapshot()
			if cl != nil {
				cl.CloseIdleConnections()
			}
		}
		a.proxy.Close()
	})
	return nil
}

// Proxy returns the capsule port proxy (an http.Handler for /proxy/…).
func (a *Agent) Proxy() *portproxy.Proxy { return a.proxy }

func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *Agent) lookup(id string) (*capsule, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.caps[id]
	if c == nil {
		return nil, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	return c, nil
}

// running returns a running capsule's envd client.
func (a *Agent) running(id string) (*capsule, *envdclient.Client, error) {
	c, err := a.lookup(id)
	if err != nil {
		return nil, nil, err
	}
	rec, _, cl := c.snapshot()
	if rec.Phase != phaseRunning || cl == nil {
		return nil, nil, fmt.Errorf("capsule %s is %s, not running: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	return c, cl, nil
}

func (a *Agent) resolveIP(_ context.Context, id string) (netip.Addr, error) {
	c, err := a.lookup(id)
	if err != nil {
		return netip.Addr{}, portproxy.ErrNoCapsule
	}
	rec, info, _ := c.snapshot()
	if rec.Phase != phaseRunning || !info.IP.IsValid() {
		return netip.Addr{}, portproxy.ErrNoCapsule
	}
	return info.IP, nil
}

func (a *Agent) newEnvd(info runtime.Info, token string) (*envdclient.Client, error) {
	return envdclient.New(envdclient.Config{Addr: info.EnvdAddr(), AccessToken: token})
}

// startSampler starts the capsule's metrics sampler (capsule must be running).
func (a *Agent) startSampler(c *capsule) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.series == nil {
		c.series = metrics.NewSeries(a.cfg.MetricTiers)
	}
	c.envdFailures, c.errReason = 0, ""
	if c.sampler == nil {
		c.sampler = metrics.NewSampler(c.series, func(ctx context.Context) (metrics.Point, error) {
			_, _, cl := c.snapshot()
			if cl == nil {
				return metrics.Point{}, errors.New("no envd client")
			}
			m, err := cl.Metrics(ctx)
			if !errors.Is(ctx.Err(), context.Canceled) {
				// The sampler's own stop is not envd's failure.
				a.envdAnswered(c, err)
			}
			if err != nil {
				return metrics.Point{}, err
			}
			return metrics.Point{
				Time: time.Now(), CPUUsedPct: m.CPUUsedPct, CPUCount: m.CPUCount,
				MemUsed: m.MemUsed, MemTotal: m.MemTotal, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
			}, nil
		}, a.cfg.SampleInterval, a.log.With("capsule_id", c.rec.ID))
	}
	c.sampler.Start()
}

func (a *Agent) stopSampler(c *capsule) {
	c.mu.Lock()
	s := c.sampler
	c.mu.Unlock()
	if s != nil {
		s.Stop()
	}
}

// save persists c's record (c.mu must not be held).
func (a *Agent) save(c *capsule, mutate func(r *record)) error {
	c.mu.Lock()
	if mutate != nil {
		mutate(&c.rec)
	}
	r := c.rec
	c.mu.Unlock()
	return a.state.save(&r)
}

func (a *Agent) expiry(timeoutSec int) time.Time {
	if timeoutSec <= 0 {
		return time.Time{}
	}
	return time.Now().Add(time.Duration(timeoutSec) * time.Second)
}

// createOptions are the agent-level parts of a create beyond runtime.Spec.
type createOptions struct {
	// TimeoutSec: 0 = the agent default, < 0 = never expires.
	TimeoutSec     int
	DefaultUser    string
	DefaultWorkdir string
	// TemplateChecksum is the SHA-256 the template's archive in the shared
	// store must have when this host fetches it ("" trusts the archive's
	// own record).
	TemplateChecksum string
	// Volumes to attach and mount (docs/VOLUMES.md).
	Volumes []*pb.VolumeMount
}

// createCapsule creates and starts a capsule, waits until envd answers and
// /inits it. On error nothing is left behind.
func (a *Agent) createCapsule(ctx context.Context, spec runtime.Spec, opt createOptions) (record, runtime.Info, error) {
	if err := validID(spec.ID); err != nil {
		return record{}, runtime.Info{}, fmt.Errorf("%w: %w", runtime.ErrInvalidSpec, err)
	}
	if spec.Template == "" {
		spec.Template = a.cfg.DefaultTemplate
	}
	tr := steptrace.New()
	defer tr.Log(a.log, "capsule create steps", "capsule_id", spec.ID)
	// An id whose driver teardown still runs (destroyed a moment ago) is
	// created once that teardown is done.
	if err := a.waitTeardownOf(ctx, spec.ID); err != nil {
		return record{}, runtime.Info{}, err
	}
	tr.Mark("teardown-wait")
	timeout := opt.TimeoutSec
	if timeout == 0 {
		timeout = int(a.cfg.DefaultTimeout / time.Second)
	}
	// What the template's build recorded (run.json): defaults under the
	// request's, and a START process to run once the capsule is up.
	rc, err := a.templateRunConfig(spec.Template)
	if err != nil {
		return record{}, runtime.Info{}, err
	}
	spec.Env, opt.DefaultUser, opt.DefaultWorkdir = rc.Apply(spec.Env, opt.DefaultUser, opt.DefaultWorkdir)
	tr.Mark("run-config")
	c := &capsule{rec: record{
		ID: spec.ID, Template: spec.Template, Spec: spec, Phase: phaseStarting,
		AccessToken: newToken(), TimeoutSec: timeout,
		DefaultUser: opt.DefaultUser, DefaultWorkdir: opt.DefaultWorkdir, CreatedAt: time.Now().UTC(),
	}}
	c.op.Lock()
	defer c.op.Unlock()
	a.mu.Lock()
	if a.caps[spec.ID] != nil {
		a.mu.Unlock()
		return record{}, runtime.Info{}, fmt.Errorf("capsule %s: %w", spec.ID, runtime.ErrExists)
	}
	a.caps[spec.ID] = c
	a.mu.Unlock()

	if err := a.ensureTemplate(ctx, spec.Template, opt.TemplateChecksum); err != nil {
		a.forget(c)
		return record{}, runtime.Info{}, err
	}
	tr.Mark("template")
	if len(opt.Volumes) > 0 {
		vols, err := a.attachVolumes(ctx, spec.ID, opt.Volumes)
		if err != nil {
			a.forget(c)
			return record{}, runtime.Info{}, err
		}
		spec.Volumes = vols
		c.mu.Lock()
		c.rec.Spec.Volumes = vols
		c.mu.Unlock()
	}
	inDriver, err := a.create(ctx, c, spec, tr)
	c.mu.Lock()
	memStarted := c.fromMemory
	c.mu.Unlock()
	if err == nil && len(rc.Start) > 0 && !memStarted {
		err = a.startTemplateProcess(ctx, c, rc)
	}
	if err != nil {
		a.discard(c, inDriver)
		a.vols.releaseCapsule(context.WithoutCancel(ctx), spec.ID)
		return record{}, runtime.Info{}, err
	}
	a.startSampler(c)
	tr.Mark("sampler")
	rec, info, _ := c.snapshot()
	return rec, info, nil
}

// create does the work of Create; inDriver reports whether the driver
// holds the capsule (so a failure must destroy it there).
func (a *Agent) create(ctx context.Context, c *capsule, spec runtime.Spec, tr *steptrace.Trace) (inDriver bool, err error) {
	log := a.log.With("capsule_id", spec.ID)
	// No state file until the capsule runs: after a crash mid-create the
	// driver's capsule has no agent state, and Recover destroys it.
	var info runtime.Info
	pooled := false
	t0 := time.Now()
	var (
		fromMemory *runtime.Info
		bootToken  string
	)
	// Capsules with volumes are made cold: their binds exist from the
	// start (a pooled or memory-restored capsule was made without them).
	var early *earlyInit
	if wp, ok := a.driver.(runtime.WarmPooler); ok && len(spec.Volumes) == 0 {
		// A warm pool of a memory template holds capsules restored
		// from it: their envd expects the template capsule's token.
		poolToken := a.memoryToken(spec.Template)
		early = &earlyInit{}
		tctx := runtime.WithThawed(ctx, func(info runtime.Info) { early.start(ctx, a, c, info, poolToken) })
		info, err = wp.Take(tctx, spec)
		early.wait()
		if err != nil && early.cl != nil {
			early.cl.CloseIdleConnections()
			early.cl = nil
		}
		switch {
		case err == nil:
			pooled = true
			bootToken = poolToken
		case errors.Is(err, runtime.ErrPoolEmpty), errors.Is(err, runtime.ErrPoolMismatch):
		case errors.Is(err, runtime.ErrNoTemplate), errors.Is(err, runtime.ErrInvalidSpec):
			return false, fmt.Errorf("create capsule %s: %w", spec.ID, err)
		default:
			log.Warn("warm pool take failed; creating cold", "err", err)
		}
	}
	if !pooled && len(spec.Volumes) == 0 {
		// A template that keeps its processes' memory: restore them under
		// the new capsule (envd still holds the template capsule's token
		// until the /init below replaces it); if that fails, boot as usual.
		fromMemory, bootToken = a.createFromMemory(ctx, spec)
		if fromMemory != nil {
			info = *fromMemory
		}
	}
	if !pooled && fromMemory == nil {
		if _, err = a.driver.Create(ctx, spec); err != nil {
			return false, fmt.Errorf("create capsule %s: %w", spec.ID, err)
		}
		if info, err = a.driver.Start(ctx, spec.ID); err != nil {
			return true, fmt.Errorf("start capsule %s: %w", spec.ID, err)
		}
	}
	started := time.Since(t0)
	tr.Mark("driver")
	var cl *envdclient.Client
	if pooled && early.cl != nil {
		cl = early.cl // /init already ran beside the take's last steps
	} else if cl, err = a.newEnvd(info, bootToken); err != nil {
		return true, err
	}
	c.mu.Lock()
	c.info, c.envd, c.pooled = info, cl, pooled
	c.fromMemory = fromMemory != nil || (pooled && bootToken != "")
	c.mu.Unlock()
	switch {
	case pooled && early.cl != nil && early.err == nil:
	case pooled:
		// A pooled capsule answered /health before it was frozen and is
		// thawed now: go straight to /init, and wait only if that fails.
		if early.cl == nil {
			err = a.readyAndInit(ctx, c, false)
		} else {
			err = early.err
		}
		if err != nil {
			if err := a.readyAndInit(ctx, c, true); err != nil {
				return true, err
			}
		}
	default:
		if err := a.readyAndInit(ctx, c, true); err != nil {
			return true, err
		}
	}
	ready := time.Since(t0) - started
	tr.Mark("envd-init")
	// Open the connection process calls use now, while the answer goes
	// back, so the capsule's first exec does not pay for it.
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = cl.Prime(pctx)
	}()
	err = a.save(c, func(r *record) {
		r.Phase = phaseRunning
		r.ExpiresAt = a.expiry(r.TimeoutSec)
		// Restored with its template's processes (the create answer's
		// memory_kept; a fork reports it).
		r.MemoryKept = fromMemory != nil
	})
	tr.Mark("save")
	log.Info("capsule created", "template", spec.Template, "ip", info.IP, "warm_pool", pooled, "from_memory", fromMemory != nil,
		"driver_ms", started.Milliseconds(), "envd_ready_init_ms", ready.Milliseconds())
	return true, err
}

// memoryToken is the envd token capsules restored from template name's
// memory image start with ("" for a template without one).
func (a *Agent) memoryToken(name string) string {
	if a.cfg.Templates == nil {
		return ""
	}
	mem, err := a.cfg.Templates.Memory(name)
	if err != nil {
		return ""
	}
	return mem.Metadata[memoryTokenKey]
}

// createFromMemory creates capsule spec from its template's memory image
// when the template has one and the driver can restore it here. It returns
// nil (and logs why) when the capsule is to be booted instead, and the
// envd access token the restored envd expects.
func (a *Agent) createFromMemory(ctx context.Context, spec runtime.Spec) (*runtime.Info, string) {
	mt, ok := a.driver.(runtime.MemoryTemplater)
	if !ok || a.cfg.Templates == nil {
		return nil, ""
	}
	mem, err := a.cfg.Templates.Memory(spec.Template)
	if err != nil {
		return nil, ""
	}
	log := a.log.With("capsule_id", spec.ID, "template", spec.Template)
	if ok, why := mt.MemoryTemplates(); !ok {
		log.Warn("template keeps memory but this host cannot restore it; booting", "reason", why)
		return nil, ""
	}
	info, err := mt.CreateFromMemory(ctx, spec, mem.Archive, mem.Metadata)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("restore from the template's memory failed; booting", "err", err)
		}
		return nil, ""
	}
	return &info, mem.Metadata[memoryTokenKey]
}

// earlyInit is a warm take's /init, started from the driver's thaw
// (runtime.WithThawed) so that it overlaps the rest of the take.
type earlyInit struct {
	cl   *envdclient.Client
	err  error
	done chan struct{}
}

// start makes envd's client for info and sends /init in the background.
func (e *earlyInit) start(ctx context.Context, a *Agent, c *capsule, info runtime.Info, token string) {
	cl, err := a.newEnvd(info, token)
	if err != nil {
		return // the create makes its own client and reports it
	}
	e.cl, e.done = cl, make(chan struct{})
	rec, _, _ := c.snapshot()
	go func() {
		defer close(e.done)
		e.err = a.initEnvd(ctx, cl, rec)
	}()
}

// wait waits for a started /init (nothing when none started).
func (e *earlyInit) wait() {
	if e != nil && e.done != nil {
		<-e.done
	}
}

// readyAndInit waits for envd's /health (wait) under its own timeout,
// then sends /init under a second, separate timeout.
func (a *Agent) readyAndInit(ctx context.Context, c *capsule, wait bool) error {
	rec, _, cl := c.snapshot()
	if wait {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReadyTimeout)
		err := cl.WaitHealthy(rctx, a.cfg.HealthInterval)
		cancel()
		if err != nil {
			return fmt.Errorf("capsule %s: %w", rec.ID, err)
		}
	}
	return a.initEnvd(ctx, cl, rec)
}

// initEnvd sends envd the capsule's identity, environment and token
// (/init) under its own timeout.
func (a *Agent) initEnvd(ctx context.Context, cl *envdclient.Client, rec record) error {
	ictx, cancel := context.WithTimeout(ctx, a.cfg.InitTimeout)
	defer cancel()
	env := rec.Spec.Env
	err := cl.Init(ictx, envdclient.InitRequest{
		CapsuleID:      rec.ID,
		TemplateID:     rec.Template,
		EnvVars:        env,
		DefaultUser:    rec.DefaultUser,
		DefaultWorkdir: rec.DefaultWorkdir,
		Timestamp:      time.Now().UTC(),
		AccessToken:    rec.AccessToken,
	})
	if err != nil {
		return fmt.Errorf("capsule %s: envd /init: %w", rec.ID, err)
	}
	return nil
}

// discard destroys whatever a failed operation left (with a fresh
// context) and forgets the capsule.
func (a *Agent) discard(c *capsule, inDriver bool) {
	a.stopSampler(c)
	id := c.rec.ID
	if inDriver {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := a.driver.Destroy(ctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			a.log.Error("destroy after failure", "capsule_id", id, "err", err)
		}
		cancel()
	}
	a.forget(c)
}

func (a *Agent) forget(c *capsule) {
	c.mu.Lock()
	id := c.rec.ID
	c.gone = true
	cl := c.envd
	c.mu.Unlock()
	if cl != nil {
		cl.CloseIdleConnections()
	}
	a.proxy.Evict(id)
	if err := a.state.remove(id); err != nil {
		a.log.Error("remove capsule state", "capsule_id", id, "err", err)
	}
	a.mu.Lock()
	if a.caps[id] == c {
		delete(a.caps, id)
	}
	a.mu.Unlock()
}

// destroyCapsule stops a capsule and frees all its resources. It answers
// once the capsule is gone from the agent; the driver's teardown runs
// after the answer (teardown.go).
func (a *Agent) destroyCapsule(_ context.Context, id string) error {
	c, err := a.lookup(id)
	if err != nil {
		return err
	}
	c.op.Lock()
	defer c.op.Unlock()
	if c.gone {
		return fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	a.stopSampler(c)
	rec, _, _ := c.snapshot()
	if len(rec.Spec.Volumes) > 0 {
		// Volumes are written back before the answer: once the control
		// plane sees the capsule gone, another host may fetch them.
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := a.driver.Destroy(dctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			return err
		}
		a.forget(c)
		a.vols.releaseCapsule(dctx, id)
		a.log.Info("capsule destroyed", "capsule_id", id)
		return nil
	}
	a.forget(c)
	a.teardown(id)
	a.log.Info("capsule destroyed", "capsule_id", id)
	return nil
}

// pauseResult describes a completed pause.
type pauseResult struct {
	Record     record
	SnapshotID string
	MemoryKept bool
}

// pauseCapsule freezes a running capsule (warm) or suspends it to disk (toDisk).
func (a *Agent) pauseCapsule(ctx context.Context, id string, toDisk bool) (pauseResult, error) {
	c, err := a.lookup(id)
	if err != nil {
		return pauseResult{}, err
	}
	var snapper runtime.Snapshotter
	var pauser runtime.Pauser
	if toDisk {
		s, ok := a.driver.(runtime.Snapshotter)
		if !ok {
			return pauseResult{}, fmt.Errorf("pause to disk: %w", runtime.ErrNotSupported)
		}
		snapper = s
	} else {
		p, ok := a.driver.(runtime.Pauser)
		if !ok {
			return pauseResult{}, fmt.Errorf("warm pause: %w", runtime.ErrNotSupported)
		}
		pauser = p
	}
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, cl := c.snapshot()
	if c.gone {
		return pauseResult{}, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	switch {
	case rec.Phase == phaseRunning:
		if err := a.quiesce(ctx, c, cl); err != nil {
			return pauseResult{}, err
		}
	case rec.Phase == phasePaused && toDisk:
		// Already frozen and quiesced: snapshot it as it is.
	default:
		return pauseResult{}, fmt.Errorf("capsule %s is %s: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	if !toDisk {
		if err := pauser.Pause(ctx, id); err != nil {
			a.unquiesce(c)
			return pauseResult{}, fmt.Errorf("pause capsule %s: %w", id, err)
		}
		if err := a.save(c, func(r *record) { r.Phase = phasePaused; r.ExpiresAt = time.Time{} }); err != nil {
			return pauseResult{}, err
		}
		a.log.Info("capsule paused", "capsule_id", id)
		rec, _, _ = c.snapshot()
		return pauseResult{Record: rec}, nil
	}
	if err := a.save(c, func(r *record) { r.PausingToDisk = true }); err != nil {
		if rec.Phase == phaseRunning {
			a.unquiesce(c)
		}
		return pauseResult{}, fmt.Errorf("pause capsule %s to disk: %w", id, err)
	}
	snap, err := snapper.Snapshot(ctx, id)
	if err != nil {
		a.afterFailedSnapshot(ctx, c, rec.Phase)
		if serr := a.save(c, func(r *record) { r.PausingToDisk = false }); serr != nil {
			a.log.Warn("record a failed pause to disk", "capsule_id", id, "err", serr)
		}
		return pauseResult{}, fmt.Errorf("snapshot capsule %s: %w", id, err)
	}
	a.proxy.Evict(id)
	if err := a.save(c, func(r *record) {
		r.Phase, r.ExpiresAt, r.Snapshot, r.MemoryKept = phaseHibernated, time.Time{}, &snap, snap.MemoryKept
		r.PausingToDisk = false
	}); err != nil {
		return pauseResult{}, err
	}
	a.log.Info("capsule paused to disk", "capsule_id", id, "snapshot", snap.ID, "memory_kept", snap.MemoryKept)
	rec, _, _ = c.snapshot()
	return pauseResult{Record: rec, SnapshotID: snap.ID, MemoryKept: snap.MemoryKept}, nil
}

// afterFailedSnapshot brings a capsule back after a failed pause to disk.
// A snapshot that failed before the driver stopped the capsule (a failed
// checkpoint) leaves it as it was: a running one is un-quiesced. One that
// failed after (its publish failed, e.g. on a full disk) leaves it stopped
// with its disk remounted: it is started again (files kept, processes
// booted again) and runs, instead of being a "running" capsule without
// processes that the health monitor would end in error.
func (a *Agent) afterFailedSnapshot(ctx context.Context, c *capsule, was phase) {
	rec, _, _ := c.snapshot()
	info, err := a.driver.Inspect(ctx, rec.ID)
	if err != nil || (info.State != runtime.StateStopped && info.State != runtime.StateCreated) {
		if was == phaseRunning {
			a.unquiesce(c)
		}
		return
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ReadyTimeout+a.cfg.InitTimeout+30*time.Second)
	defer cancel()
	if info, err = a.driver.Start(bg, rec.ID); err != nil {
		a.log.Error("start a capsule again after its pause to disk failed", "capsule_id", rec.ID, "err", err)
		return
	}
	cl, err := a.newEnvd(info, "")
	if err != nil {
		a.log.Error("envd client after a failed pause to disk", "capsule_id", rec.ID, "err", err)
		return
	}
	c.mu.Lock()
	c.info, c.envd = info, cl
	c.mu.Unlock()
	if err := a.readyAndInit(bg, c, true); err != nil {
		a.log.Error("re-init a capsule started again after its pause to disk failed", "capsule_id", rec.ID, "err", err)
		return
	}
	if err := a.save(c, func(r *record) {
		r.Phase = phaseRunning
		if r.ExpiresAt.IsZero() {
			r.ExpiresAt = a.expiry(r.TimeoutSec)
		}
	}); err != nil {
		a.log.Warn("record a capsule started again", "capsule_id", rec.ID, "err", err)
	}
	a.startSampler(c)
	a.log.Warn("pause to disk failed after the capsule stopped; started it again (files kept, processes booted again)", "capsule_id", rec.ID)
}

// quiesce prepares a running capsule for a freeze: sampler stopped, idle
// envd connections closed, /snapshot/prepare answered.
func (a *Agent) quiesce(ctx context.Context, c *capsule, cl *envdclient.Client) error {
	a.stopSampler(c)
	cl.CloseIdleConnections()
	pctx, cancel := context.WithTimeout(ctx, a.cfg.PrepareTimeout)
	err := cl.PrepareSnapshot(pctx)
	cancel()
	cl.CloseIdleConnections()
	if err != nil {
		a.startSampler(c)
		return fmt.Errorf("capsule %s: envd /snapshot/prepare: %w", c.rec.ID, err)
	}
	return nil
}

// unquiesce undoes quiesce after a failed freeze (best effort).
func (a *Agent) unquiesce(c *capsule) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.InitTimeout)
	defer cancel()
	if err := a.readyAndInit(ctx, c, false); err != nil {
		a.log.Warn("re-init after a failed pause", "capsule_id", c.rec.ID, "err", err)
	}
	a.startSampler(c)
}

// resumeCapsule thaws or restores a paused capsule and re-inits envd. A failed
// resume destroys the capsule. timeoutSec > 0 replaces the capsule's TTL.
func (a *Agent) resumeCapsule(ctx context.Context, id string, timeoutSec int) (record, runtime.Info, error) {
	return a.resumeCapsuleAs(ctx, id, timeoutSec, false)
}

// resumeCapsuleAs is resumeCapsule; adopting (a move's adopt-and-resume)
// releases instead of destroying a capsule whose resume fails (move.go).
func (a *Agent) resumeCapsuleAs(ctx context.Context, id string, timeoutSec int, adopting bool) (record, runtime.Info, error) {
	c, err := a.lookup(id)
	if err != nil {
		return record{}, runtime.Info{}, err
	}
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, _ := c.snapshot()
	if c.gone {
		return record{}, runtime.Info{}, fmt.Errorf("capsule %s: %w", id, runtime.ErrNotFound)
	}
	if rec.Phase != phasePaused && rec.Phase != phaseHibernated {
		return record{}, runtime.Info{}, fmt.Errorf("capsule %s is %s: %w", id, rec.Phase, runtime.ErrInvalidState)
	}
	// The resume runs detached from the caller: a caller that gives up
	// must not leave a half-resumed capsule or trigger a false destroy.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ResumeTimeout)
	defer cancel()
	if err := a.resume(rctx, c, rec); err != nil {
		if adopting {
			// Another host still owns the capsule and its snapshot.
			a.log.Error("resume of an adopted capsule failed; releasing it", "capsule_id", id, "err", err)
			a.releaseLocal(c)
			return record{}, runtime.Info{}, fmt.Errorf("resume capsule %s failed; it stays where it was: %w", id, err)
		}
		a.log.Error("resume failed; destroying the capsule", "capsule_id", id, "err", err)
		a.discard(c, true)
		return record{}, runtime.Info{}, fmt.Errorf("resume capsule %s failed and it was destroyed: %w", id, err)
	}
	if err := a.save(c, func(r *record) {
		if timeoutSec > 0 {
			r.TimeoutSec = timeoutSec
		}
		r.Phase = phaseRunning
		r.ExpiresAt = a.expiry(r.TimeoutSec)
	}); err != nil {
		return record{}, runtime.Info{}, err
	}
	a.startSampler(c)
	a.log.Info("capsule resumed", "capsule_id", id, "from", rec.Phase)
	rec, info, _ := c.snapshot()
	return rec, info, nil
}

func (a *Agent) resume(ctx context.Context, c *capsule, rec record) error {
	if rec.Phase == phasePaused {
		p, ok := a.driver.(runtime.Pauser)
		if !ok {
			return runtime.ErrNotSupported
		}
		if err := p.Resume(ctx, rec.ID); err != nil {
			return err
		}
		_, _, cl := c.snapshot()
		cl.CloseIdleConnections()
		return a.readyAndInit(ctx, c, true)
	}
	s, ok := a.driver.(runtime.Snapshotter)
	if !ok {
		return runtime.ErrNotSupported
	}
	if rec.Snapshot == nil {
		return errors.New("no snapshot recorded for a hibernated capsule")
	}
	info, err := s.Restore(ctx, *rec.Snapshot)
	if err != nil {
		return err
	}
	cl, err := a.newEnvd(info, rec.AccessToken)
	if err != nil {
		return err
	}
	c.mu.Lock()
	old := c.envd
	c.info, c.envd = info, cl
	c.rec.MemoryKept = info.MemoryKept
	c.mu.Unlock()
	if old != nil {
		old.CloseIdleConnections()
	}
	return a.readyAndInit(ctx, c, true)
}

// setTimeout sets a capsule's TTL to timeoutSec from now (≤ 0: never).
func (a *Agent) setTimeout(id string, timeoutSec int) (time.Time, error) {
	c, err := a.lookup(id)
	if err != nil {
		return time.Time{}, err
	}
	var exp time.Time
	err = a.save(c, func(r *record) {
		r.TimeoutSec = max(timeoutSec, -1)
		if timeoutSec <= 0 {
			r.TimeoutSec = -1
		}
		if r.Phase == phaseRunning {
			r.ExpiresAt = a.expiry(timeoutSec)
		}
		exp = r.ExpiresAt
	})
	return exp, err
}

// capsules returns every capsule the agent holds.
func (a *Agent) capsules() []*capsule {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*capsule, 0, len(a.caps))
	for _, c := range a.caps {
		out = append(out, c)
	}
	return out
}

func (a *Agent) reaper(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for _, c := range a.capsules() {
			rec, _, _ := c.snapshot()
			if rec.Phase != phaseRunning || rec.ExpiresAt.IsZero() || now.Before(rec.ExpiresAt) {
				continue
			}
			a.log.Info("capsule timed out; destroying", "capsule_id", rec.ID, "expired_at", rec.ExpiresAt)
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if err := a.destroyIfExpired(dctx, c); err != nil {
				a.log.Error("reap capsule", "capsule_id", rec.ID, "err", err)
			}
			cancel()
		}
	}
}

// destroyIfExpired destroys c unless a refresh or pause raced the reaper.
func (a *Agent) destroyIfExpired(ctx context.Context, c *capsule) error {
	c.op.Lock()
	defer c.op.Unlock()
	rec, _, _ := c.snapshot()
	if c.gone || rec.Phase != phaseRunning || rec.ExpiresAt.IsZero() || time.Now().Before(rec.ExpiresAt) {
		return nil
	}
	a.stopSampler(c)
	if err := a.driver.Destroy(ctx, rec.ID); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return err
	}
	a.forget(c)
	a.vols.releaseCapsule(ctx, rec.ID)
	return nil
}

// recover re-adopts capsules after an agent restart.
func (a *Agent) recover(ctx context.Context) error {
	infos, err := a.driver.Recover(ctx)
	if err != nil {
		return fmt.Errorf("hostagent: driver recover: %w", err)
	}
	recs, errs := a.state.load()
	for _, e := range errs {
		a.log.Warn("agent state", "err", e)
	}
	seen := map[string]bool{}
	var reinit, restart []*capsule
	for _, info := range infos {
		seen[info.ID] = true
		rec := recs[info.ID]
		if rec != nil && rec.PausingToDisk {
			info = a.interruptedPause(ctx, rec, info)
		}
		if reason := adoptable(rec, info); reason != "" {
			a.log.Warn("destroying capsule that cannot be re-adopted", "capsule_id", info.ID, "reason", reason)
			if err := a.destroyUnadoptable(ctx, rec, info); err != nil && !errors.Is(err, runtime.ErrNotFound) {
				a.log.Error("destroy unadoptable capsule", "capsule_id", info.ID, "err", err)
			}
			_ = a.state.remove(info.ID)
			continue
		}
		c := &capsule{rec: *rec, info: info}
		switch info.State {
		case runtime.StateStopped:
			// A pause to disk a crash interrupted before it committed:
			// started again below (files kept, processes booted again).
			restart = append(restart, c)
		case runtime.StateRunning:
			c.rec.Phase = phaseRunning
			if c.rec.ExpiresAt.IsZero() {
				c.rec.ExpiresAt = a.expiry(c.rec.TimeoutSec)
			}
		case runtime.StatePaused:
			c.rec.Phase = phasePaused
		case runtime.StateSnapshotted:
			c.rec.Phase = phaseHibernated
		}
		if c.rec.Phase != phaseHibernated {
			if c.envd, err = a.newEnvd(info, rec.AccessToken); err != nil {
				return err
			}
		}
		if err := a.state.save(&c.rec); err != nil {
			return err
		}
		a.caps[info.ID] = c
		if c.rec.Phase == phaseRunning {
			reinit = append(reinit, c)
		}
		a.log.Info("capsule re-adopted", "capsule_id", info.ID, "phase", c.rec.Phase)
	}
	// A crash between prepare and freeze leaves envd quiesced; /init undoes
	// that and closes the dead connections. In parallel, a few at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, c := range reinit {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := a.readyAndInit(ctx, c, false); err != nil {
				a.log.Warn("re-init of an adopted capsule", "capsule_id", c.rec.ID, "err", err)
			}
			a.startSampler(c)
		})
	}
	for _, c := range restart {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			a.restartAfterInterruptedPause(ctx, c)
		})
	}
	wg.Wait()
	for id := range recs {
		if !seen[id] {
			a.log.Warn("forgetting capsule the driver no longer has", "capsule_id", id)
			_ = a.state.remove(id)
		}
	}
	return nil
}

// adoptable returns "" when a recovered capsule can be re-adopted.
func adoptable(rec *record, info runtime.Info) string {
	switch {
	case rec == nil:
		return "no agent state (a create that never finished)"
	case rec.Phase == phaseStarting:
		return "create never finished"
	case info.State == runtime.StateSnapshotted && rec.Snapshot == nil:
		return "snapshot finished after the agent died; no snapshot recorded"
	case info.State == runtime.StateStopped && rec.PausingToDisk:
		return "" // started again (restartAfterInterruptedPause)
	case info.State != runtime.StateRunning && info.State != runtime.StatePaused && info.State != runtime.StateSnapshotted:
		return "driver state " + string(info.State)
	}
	return ""
}

// interruptedPause settles, at restart, a capsule whose pause to disk the
// agent's crash interrupted. A committed one (the driver holds its
// snapshot) becomes hibernated; a capsule the driver froze for its memory
// checkpoint is thawed; one the pause had stopped is left for
// restartAfterInterruptedPause. The returned info is what to adopt.
func (a *Agent) interruptedPause(ctx context.Context, rec *record, info runtime.Info) runtime.Info {
	rec.PausingToDisk = false
	switch info.State {
	case runtime.StateSnapshotted:
		if rec.Snapshot == nil {
			if cs, ok := a.driver.(runtime.CommittedSnapshots); ok {
				if snap, ok := cs.CommittedSnapshot(info.ID); ok {
					rec.Snapshot, rec.MemoryKept, rec.ExpiresAt = &snap, snap.MemoryKept, time.Time{}
					a.log.Warn("a pause to disk the agent's crash interrupted had committed; the capsule is hibernated", "capsule_id", info.ID, "snapshot", snap.ID)
				}
			}
		}
	case runtime.StatePaused:
		if rec.Phase != phaseRunning {
			break // paused by its user before the pause to disk
		}
		p, ok := a.driver.(runtime.Pauser)
		if !ok {
			break
		}
		if err := p.Resume(ctx, info.ID); err != nil {
			a.log.Warn("thaw a capsule frozen by an interrupted pause to disk", "capsule_id", info.ID, "err", err)
			break
		}
		info.State = runtime.StateRunning
		a.log.Warn("a pause to disk the agent's crash interrupted had frozen the capsule; thawed it", "capsule_id", info.ID)
	case runtime.StateStopped, runtime.StateCreated:
		info.State = runtime.StateStopped
		rec.PausingToDisk = true // restartAfterInterruptedPause clears it
	}
	return info
}

// restartAfterInterruptedPause starts again a capsule an interrupted pause
// to disk had stopped (its files are kept; its processes boot again), as
// after a failed pause (afterFailedSnapshot).
func (a *Agent) restartAfterInterruptedPause(ctx context.Context, c *capsule) {
	rec, _, _ := c.snapshot()
	bg, cancel := context.WithTimeout(ctx, a.cfg.ReadyTimeout+a.cfg.InitTimeout+30*time.Second)
	defer cancel()
	info, err := a.driver.Start(bg, rec.ID)
	if err != nil {
		a.log.Error("start a capsule an interrupted pause to disk had stopped", "capsule_id", rec.ID, "err", err)
		return
	}
	cl, err := a.newEnvd(info, rec.AccessToken)
	if err != nil {
		a.log.Error("envd client after an interrupted pause to disk", "capsule_id", rec.ID, "err", err)
		return
	}
	c.mu.Lock()
	c.info, c.envd = info, cl
	c.mu.Unlock()
	if err := a.readyAndInit(bg, c, true); err != nil {
		a.log.Error("re-init a capsule started again after an interrupted pause to disk", "capsule_id", rec.ID, "err", err)
		return
	}
	if err := a.save(c, func(r *record) {
		r.Phase, r.PausingToDisk = phaseRunning, false
		if r.ExpiresAt.IsZero() {
			r.ExpiresAt = a.expiry(r.TimeoutSec)
		}
	}); err != nil {
		a.log.Warn("record a capsule started again", "capsule_id", rec.ID, "err", err)
	}
	a.startSampler(c)
	a.log.Warn("a pause to disk the agent's crash interrupted had stopped the capsule; started it again (files kept, processes booted again)", "capsule_id", rec.ID)
}
