package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// poolSet holds the warm pools: per template, capsules that are started,
// have answered /health and are frozen. They are not in the driver's
// capsule map until taken. A pool's size is fixed or sized by demand
// (runtime.PoolSizer); one filler goroutine per pool makes capsules one
// at a time, never two at once across pools (warm), and only while no
// real create is in flight (creating): refills yield to creates.
type poolSet struct {
	mu     sync.Mutex
	pools  map[string]*pool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	warm      sync.Mutex   // held while a pool capsule is made
	creating  atomic.Int32 // real creates in flight
	lastBusy  atomic.Int64 // UnixNano when the last real create ended
	capsuleMB atomic.Int64 // memory of the last pool capsule made, MiB
}

type pool struct {
	sizer   runtime.PoolSizer
	target  int
	limit   string
	ready   []*capsule
	filling bool
	kick    chan struct{}
	hits    uint64
	misses  uint64
}

func (ps *poolSet) init() {
	ps.pools = map[string]*pool{}
	ps.ctx, ps.cancel = context.WithCancel(context.Background())
}

// busy marks a real create in flight until the returned func runs.
func (ps *poolSet) busy() func() {
	ps.creating.Add(1)
	return func() {
		ps.lastBusy.Store(time.Now().UnixNano())
		ps.creating.Add(-1)
	}
}

// yieldGap is how long refills wait after the last real create ended (a
// create is Create then Start: this covers the gap between them);
// maxYield bounds the wait, so a steady stream of creates cannot starve
// the pool that would serve them (one refill at a time takes at most one
// core's share from them).
const (
	yieldGap = 50 * time.Millisecond
	maxYield = time.Second
)

// waitIdle blocks until no real create is in flight, for at most maxYield
// (or until ctx ends).
func (ps *poolSet) waitIdle(ctx context.Context) error {
	deadline := time.Now().Add(maxYield)
	for {
		if ps.creating.Load() == 0 && time.Since(time.Unix(0, ps.lastBusy.Load())) >= yieldGap || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// SetWarmPool implements runtime.WarmPooler: n capsules, 0 drains,
// runtime.WarmPoolAuto sizes the pool by demand.
func (d *Driver) SetWarmPool(template string, n int) {
	ps := &d.pools
	ps.mu.Lock()
	p, ok := ps.pools[template]
	if !ok {
		p = &pool{kick: make(chan struct{}, 1)}
		ps.pools[template] = p
	}
	old := p.sizer
	p.sizer = runtime.NewPoolSizer(n)
	p.sizer.CarryOver(old)
	drain := d.retarget(p)
	start := !p.filling && ps.ctx.Err() == nil
	if start {
		p.filling = true
		ps.wg.Add(1)
	}
	ps.mu.Unlock()
	for _, c := range drain {
		d.destroyPooled(c)
	}
	if start {
		go d.fill(template, p)
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// retarget recomputes p's target from demand and free memory and returns
// the capsules above it, removed from the pool (ps.mu held).
func (d *Driver) retarget(p *pool) []*capsule {
	p.target, p.limit = p.sizer.Target(time.Now(), len(p.ready), d.poolMemFits())
	var drain []*capsule
	for len(p.ready) > p.target {
		drain = append(drain, p.ready[len(p.ready)-1])
		p.ready = p.ready[:len(p.ready)-1]
	}
	return drain
}

// poolMemFits is how many more pool capsules fit in the host's free
// memory above runtime.WarmPoolMemoryReserve (negative: that many should
// go). A pool capsule's size is the last one measured (64 MiB before).
func (d *Driver) poolMemFits() int {
	total, avail, err := runtime.MemInfo()
	if err != nil || total == 0 {
		return 0
	}
	per := max(d.pools.capsuleMB.Load(), 16) << 20
	if d.pools.capsuleMB.Load() == 0 {
		per = 64 << 20
	}
	free := int64(avail) - int64(runtime.WarmPoolMemoryReserve(total)) //nolint:gosec // memory sizes fit in int64
	if free < 0 {
		return int(free/per) - 1
	}
	return int(free / per)
}

// WarmPoolSize returns how many warm capsules of template are ready.
func (d *Driver) WarmPoolSize(template string) int {
	d.pools.mu.Lock()
	defer d.pools.mu.Unlock()
	if p, ok := d.pools.pools[template]; ok {
		return len(p.ready)
	}
	return 0
}

// WarmPools implements runtime.WarmPoolReporter.
func (d *Driver) WarmPools() []runtime.WarmPoolStatus {
	ps := &d.pools
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make([]runtime.WarmPoolStatus, 0, len(ps.pools))
	for name, p := range ps.pools {
		if p.sizer.Max == 0 && len(p.ready) == 0 {
			continue
		}
		out = append(out, runtime.WarmPoolStatus{
			Template: name, Ready: len(p.ready), Target: p.target, Auto: p.sizer.Auto, Max: p.sizer.Max,
			Hits: p.hits, Misses: p.misses, Limit: p.limit,
		})
	}
	slices.SortFunc(out, func(a, b runtime.WarmPoolStatus) int { return strings.Compare(a.Template, b.Template) })
	return out
}

// fill keeps a pool at its target until the driver closes: it re-sizes
// the pool every second (demand and free memory change), drains what is
// above the target and makes what is missing, one capsule at a time and
// only while no real create runs.
func (d *Driver) fill(template string, p *pool) {
	ps := &d.pools
	defer ps.wg.Done()
	failures := 0
	for {
		ps.mu.Lock()
		drain := d.retarget(p)
		need := p.target - len(p.ready)
		ps.mu.Unlock()
		for _, c := range drain {
			d.destroyPooled(c)
		}
		if need <= 0 || failures > 0 {
			wait := time.Duration(0)
			if failures > 0 {
				wait = time.Duration(min(failures, 30)) * time.Second
			}
			select {
			case <-ps.ctx.Done():
				return
			case <-p.kick:
			case <-time.After(max(wait, time.Second)):
			}
			if failures > 0 && need > 0 {
				failures = 0
			}
			continue
		}
		if ps.waitIdle(ps.ctx) != nil {
			return
		}
		ps.warm.Lock()
		t0 := time.Now()
		c, err := d.warmOne(ps.ctx, template)
		took := time.Since(t0)
		ps.warm.Unlock()
		if err != nil {
			if ps.ctx.Err() != nil {
				return
			}
			failures++
			if errors.Is(err, runtime.ErrNoTemplate) {
				// A default pool of a template this host lacks (yet):
				// look again every 30 s, quietly.
				failures = 30
				d.log.Debug("warm pool: no such template yet", "template", template)
				continue
			}
			d.log.Warn("warm pool: cannot make capsule", "template", template, "err", err)
			continue
		}
		if _, mem, _, _, err := d.cg.usage(d.cgroupPath(c.rec.Key)); err == nil && mem > 0 {
			ps.capsuleMB.Store(int64(mem >> 20)) //nolint:gosec // MiB of one capsule fit in int64
		}
		ps.mu.Lock()
		p.sizer.Refilled(took)
		if ps.ctx.Err() != nil || len(p.ready) >= p.target {
			ps.mu.Unlock()
			d.destroyPooled(c)
			continue
		}
		p.ready = append(p.ready, c)
		ps.mu.Unlock()
	}
}

// warmOne creates, starts, waits for and freezes one pool capsule.
func (d *Driver) warmOne(ctx context.Context, template string) (*capsule, error) {
	key := newKey()
	spec, tmpl, err := d.normalize(runtime.Spec{ID: "pool-" + key, Template: template})
	if err != nil {
		return nil, err
	}
	c := &capsule{rec: newRecord(spec, true)}
	s := d.createSteps(OpWarm, &c.rec, tmpl, nil)
	if mem, err := d.cfg.Templates.Memory(template); err == nil && d.criu {
		// A template that keeps its processes: pool capsules are restored
		// from its memory image (memtemplate.go), not booted.
		s.Append(d.memorySteps(&c.rec, mem.Archive, mem.Metadata)...)
	} else {
		s.Append(
			d.startStep(&c.rec),
			runtime.Step{Name: "wait-ready", Do: func(ctx context.Context) error {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				return d.WaitReady(wctx, d.info(&c.rec))
			}},
		)
	}
	s.Append(
		runtime.Step{Name: "freeze", Do: func(context.Context) error {
			if err := d.cg.freeze(d.cgroupPath(c.rec.Key), true); err != nil {
				return err
			}
			c.rec.State = runtime.StatePaused
			return d.save(&c.rec)
		}},
	)
	// Every step yields to real creates that came meanwhile (bounded by
	// maxYield): a refill started before a create would otherwise take
	// CPU from it for the rest of its ≈ 80 ms on a small host.
	for _, name := range s.Names() {
		_ = s.Wrap(name, func(ctx context.Context, next func(context.Context) error) error {
			if err := d.pools.waitIdle(ctx); err != nil {
				return err
			}
			return next(ctx)
		})
	}
	if err := d.runSteps(ctx, s); err != nil {
		c.gone = true
		return nil, err
	}
	return c, nil
}

func (d *Driver) destroyPooled(c *capsule) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d.release(ctx, &c.rec)
	_ = os.RemoveAll(d.paths(c.rec.Key).Dir)
	c.gone = true
}

// Take implements runtime.WarmPooler: it thaws a warm capsule of
// spec.Template, gives it spec.ID (hostname included), applies the network
// policy and labels, and returns it running. The caller then /inits envd
// with spec.Env and the new identity. Limits must be the driver defaults.
func (d *Driver) Take(ctx context.Context, spec runtime.Spec) (runtime.Info, error) {
	// A take is a create too: the refill it kicks waits until the
	// capsule has been handed over (pool.go, busy).
	defer d.pools.busy()()
	want, _, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	if want.VCPUs != d.cfg.DefaultVCPUs || want.MemoryMB != d.cfg.DefaultMemoryMB || spec.DiskSizeMB != 0 && spec.DiskSizeMB != d.cfg.DefaultDiskSizeMB {
		return runtime.Info{}, fmt.Errorf("take %s: %w", spec.Template, runtime.ErrPoolMismatch)
	}
	ps := &d.pools
	counted := false
	for {
		ps.mu.Lock()
		p, ok := ps.pools[spec.Template]
		if !ok {
			ps.mu.Unlock()
			return runtime.Info{}, fmt.Errorf("take %s: %w", spec.Template, runtime.ErrPoolEmpty)
		}
		if !counted {
			counted = true
			p.sizer.Demand(time.Now())
		}
		if len(p.ready) == 0 {
			p.misses++
			ps.mu.Unlock()
			select {
			case p.kick <- struct{}{}:
			default:
			}
			return runtime.Info{}, fmt.Errorf("take %s: %w", spec.Template, runtime.ErrPoolEmpty)
		}
		p.hits++
		c := p.ready[0]
		p.ready = p.ready[1:]
		ps.mu.Unlock()
		select {
		case p.kick <- struct{}{}:
		default:
		}
		info, err := d.adoptPooled(ctx, c, want)
		if err == nil {
			return info, nil
		}
		if errors.Is(err, runtime.ErrExists) {
			return runtime.Info{}, err
		}
		d.log.Warn("warm pool: bad capsule dropped", "template", spec.Template, "err", err)
	}
}

func (d *Driver) adoptPooled(ctx context.Context, c *capsule, spec runtime.Spec) (runtime.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.reserve(spec.ID, c); err != nil {
		// Put it back: the pool capsule is fine, the ID is taken.
		d.returnPooled(spec.Template, c)
		return runtime.Info{}, err
	}
	fail := func(err error) (runtime.Info, error) {
		d.unreserve(spec.ID, c)
		d.destroyPooled(c)
		return runtime.Info{}, err
	}
	// Named, timed steps like create's (debug log: op=take).
	st := &runtime.Steps{Op: OpTake, ID: spec.ID, Log: d.log}
	st.Append(
		runtime.Step{Name: "thaw", Do: func(ctx context.Context) error {
			if err := d.cg.freeze(d.cgroupPath(c.rec.Key), false); err != nil {
				return err
			}
			// envd runs again: the agent's /init overlaps the steps below.
			info := d.info(&c.rec)
			info.ID = spec.ID
			runtime.Thawed(ctx, info)
			return nil
		}},
		// hostname, policy and etc only read the record: they run side by
		// side, and state (which writes it) waits for them.
		runtime.Step{Name: "hostname", Async: true, Do: func(ctx context.Context) error { return d.setHostnameVia(ctx, &c.rec, spec.ID) }},
		runtime.Step{Name: "policy", Async: true, Do: func(context.Context) error {
			d.net.Label(c.rec.Key, spec.ID)
			return d.net.SetPolicy(c.rec.Net, spec.AllowInternet, spec.Network)
		}},
		runtime.Step{Name: "etc", Async: true, Do: func(context.Context) error { return d.writeEtc(&c.rec, spec.ID) }},
		runtime.Step{Name: "state", Do: func(context.Context) error {
			c.rec.ID = spec.ID
			c.rec.Pool = false
			c.rec.State = runtime.StateRunning
			c.rec.CreatedAt = time.Now().UTC()
			spec.DiskSizeMB = c.rec.Spec.DiskSizeMB
			c.rec.Spec = spec
			return d.save(&c.rec)
		}},
	)
	if err := d.runSteps(ctx, st); err != nil {
		return fail(err)
	}
	return d.info(&c.rec), nil
}

func (d *Driver) returnPooled(template string, c *capsule) {
	ps := &d.pools
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p, ok := ps.pools[template]; ok && ps.ctx.Err() == nil {
		p.ready = append(p.ready, c)
		return
	}
	go d.destroyPooled(c)
}

// close stops the fillers and destroys every pooled capsule.
func (ps *poolSet) close(d *Driver) {
	ps.cancel()
	ps.wg.Wait()
	ps.mu.Lock()
	var all []*capsule
	for _, p := range ps.pools {
		all = append(all, p.ready...)
		p.ready = nil
	}
	ps.mu.Unlock()
	for _, c := range all {
		d.destroyPooled(c)
	}
}

// setHostname sets the hostname in the UTS namespace of pid.
func setHostname(pid int, name string) error {
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/uts", pid))
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer target.Close()
	goruntime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/uts")
	if err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("container: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWUTS); err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("container: setns uts: %w", err)
	}
	herr := unix.Sethostname([]byte(name))
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWUTS); err != nil {
		// Leave the thread locked: Go discards it when the goroutine ends.
		return fmt.Errorf("container: restore uts: %w", err)
	}
	goruntime.UnlockOSThread()
	if herr != nil {
		return fmt.Errorf("container: sethostname: %w", herr)
	}
	return nil
}
