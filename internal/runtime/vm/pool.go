package vm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Warm pools: per template, microVMs that have booted, answered envd's
// /health and are paused (vCPUs stopped, RAM kept in their RAM file, no
// host CPU). Take resumes one, renames it and hands it over; the caller
// then /inits envd as for a cold capsule. Pool capsules are in the
// driver's map under their pool ID ("pool-<key>") but List, Inspect and
// the other public calls do not show them (record.Pool); Recover removes
// any a previous agent left.

type poolSet struct {
	mu     sync.Mutex
	pools  map[string]*pool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type pool struct {
	want    int
	ready   []*capsule
	filling bool
	kick    chan struct{}
}

func (ps *poolSet) init() {
	ps.pools = map[string]*pool{}
	ps.ctx, ps.cancel = context.WithCancel(context.Background())
}

var _ runtime.WarmPooler = (*Driver)(nil)

// SetWarmPool implements runtime.WarmPooler.
func (d *Driver) SetWarmPool(template string, n int) {
	ps := &d.pools
	ps.mu.Lock()
	p, ok := ps.pools[template]
	if !ok {
		p = &pool{kick: make(chan struct{}, 1)}
		ps.pools[template] = p
	}
	p.want = max(n, 0)
	var drain []*capsule
	for len(p.ready) > p.want {
		drain = append(drain, p.ready[len(p.ready)-1])
		p.ready = p.ready[:len(p.ready)-1]
	}
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

// WarmPoolSize returns how many warm microVMs of template are ready.
func (d *Driver) WarmPoolSize(template string) int {
	d.pools.mu.Lock()
	defer d.pools.mu.Unlock()
	if p, ok := d.pools.pools[template]; ok {
		return len(p.ready)
	}
	return 0
}

// fill keeps a pool at its wanted size until the driver closes; a failed
// boot backs off (1 s, growing to 30 s).
func (d *Driver) fill(template string, p *pool) {
	ps := &d.pools
	defer ps.wg.Done()
	failures := 0
	for {
		ps.mu.Lock()
		need := p.want - len(p.ready)
		ps.mu.Unlock()
		if need <= 0 || failures > 0 {
			wait := time.Second
			if failures > 0 {
				wait = time.Duration(min(failures, 30)) * time.Second
			}
			select {
			case <-ps.ctx.Done():
				return
			case <-p.kick:
			case <-time.After(wait):
				failures = 0
			}
			continue
		}
		c, err := d.warmOne(ps.ctx, template)
		if err != nil {
			if ps.ctx.Err() != nil {
				return
			}
			failures++
			d.log.Warn("warm pool: cannot boot a microVM", "template", template, "err", err)
			continue
		}
		ps.mu.Lock()
		if ps.ctx.Err() != nil || len(p.ready) >= p.want {
			ps.mu.Unlock()
			d.destroyPooled(c)
			continue
		}
		p.ready = append(p.ready, c)
		ps.mu.Unlock()
	}
}

// warmOne boots one pool microVM with the driver's default limits and
// pauses it.
func (d *Driver) warmOne(ctx context.Context, template string) (*capsule, error) {
	id := "pool-" + newKey()
	if _, err := d.create(ctx, runtime.Spec{ID: id, Template: template}, true); err != nil {
		return nil, err
	}
	if _, err := d.start(ctx, id, true); err != nil {
		_ = d.destroy(context.WithoutCancel(ctx), id, true)
		return nil, err
	}
	c, err := d.getAny(id, true)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if err := c.m.Pause(ctx); err != nil {
		c.mu.Unlock()
		_ = d.destroy(context.WithoutCancel(ctx), id, true)
		c.mu.Lock()
		return nil, err
	}
	c.rec.State = runtime.StatePaused
	if err := d.save(&c.rec); err != nil {
		c.mu.Unlock()
		_ = d.destroy(context.WithoutCancel(ctx), id, true)
		c.mu.Lock()
		return nil, err
	}
	return c, nil
}

func (d *Driver) destroyPooled(c *capsule) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.mu.Lock()
	id := c.rec.ID
	c.mu.Unlock()
	if err := d.destroy(ctx, id, true); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		d.log.Warn("warm pool: destroy", "capsule_id", id, "err", err)
	}
}

// Take implements runtime.WarmPooler: a paused pool microVM of
// spec.Template is resumed, given spec.ID (hostname, /etc/hostname and
// /etc/hosts, through envd, which has no access token before the
// caller's /init), its network policy and labels, and returned running.
// Limits must be the driver's defaults (ErrPoolMismatch otherwise).
func (d *Driver) Take(ctx context.Context, spec runtime.Spec) (runtime.Info, error) {
	want, _, err := d.normalize(spec)
	if err != nil {
		return runtime.Info{}, err
	}
	if want.VCPUs != d.cfg.DefaultVCPUs || want.MemoryMB != d.cfg.DefaultMemoryMB || want.DiskSizeMB != d.cfg.DefaultDiskSizeMB {
		return runtime.Info{}, fmt.Errorf("take %s: %w", spec.Template, runtime.ErrPoolMismatch)
	}
	ps := &d.pools
	for {
		ps.mu.Lock()
		p, ok := ps.pools[spec.Template]
		if !ok || len(p.ready) == 0 {
			ps.mu.Unlock()
			return runtime.Info{}, fmt.Errorf("take %s: %w", spec.Template, runtime.ErrPoolEmpty)
		}
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
		d.log.Warn("warm pool: bad microVM dropped", "template", spec.Template, "err", err)
	}
}

func (d *Driver) adoptPooled(ctx context.Context, c *capsule, spec runtime.Spec) (runtime.Info, error) {
	c.mu.Lock()
	poolID := c.rec.ID
	if c.gone {
		c.mu.Unlock()
		return runtime.Info{}, errors.New("pool capsule gone")
	}
	if err := d.reserve(spec.ID, c); err != nil {
		c.mu.Unlock()
		d.returnPooled(spec.Template, c)
		return runtime.Info{}, err
	}
	fail := func(err error) (runtime.Info, error) {
		d.unreserve(spec.ID, c)
		c.mu.Unlock()
		d.destroyPooled(c)
		return runtime.Info{}, err
	}
	d.noticeExit(c)
	if c.m == nil || c.rec.State != runtime.StatePaused {
		return fail(fmt.Errorf("pool capsule %s is %s", poolID, c.rec.State))
	}
	if err := c.m.Resume(ctx); err != nil {
		return fail(err)
	}
	c.rec.State = runtime.StateRunning
	if err := d.rename(ctx, &c.rec, spec.ID); err != nil {
		return fail(err)
	}
	d.net.Label(c.rec.Key, spec.ID)
	if err := d.net.SetPolicy(c.rec.Net, spec.AllowInternet, spec.Network); err != nil {
		return fail(err)
	}
	d.unreserve(poolID, c)
	c.rec.ID = spec.ID
	c.rec.Pool = false
	c.rec.CreatedAt = time.Now().UTC()
	spec.DiskSizeMB = c.rec.Spec.DiskSizeMB
	c.rec.Spec = spec
	if err := d.save(&c.rec); err != nil {
		d.mu.Lock()
		d.caps[poolID] = c
		d.mu.Unlock()
		c.rec.ID = poolID
		return fail(err)
	}
	info := d.info(&c.rec)
	c.mu.Unlock()
	return info, nil
}

// rename gives a running guest its capsule's name: hostname, /etc/hostname
// and /etc/hosts (as the guest init writes them at boot).
func (d *Driver) rename(ctx context.Context, rec *record, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := envdclient.New(envdclient.Config{Addr: d.info(rec).EnvdAddr()})
	if err != nil {
		return err
	}
	defer cl.CloseIdleConnections()
	script := `echo "$1" >/proc/sys/kernel/hostname && echo "$1" >/etc/hostname && printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$1" >/etc/hosts`
	res, err := cl.Exec(envdclient.WithUser(ctx, "root"), &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script, "sh", id}}, envdclient.ExecOptions{})
	if err != nil {
		return fmt.Errorf("vm: rename warm capsule: %w", err)
	}
	if res.ExitCode != 0 || res.Error != "" {
		return fmt.Errorf("vm: rename warm capsule: exit code %d %s: %s", res.ExitCode, res.Error, res.Stderr)
	}
	return nil
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

// close stops the fillers and destroys every pooled microVM.
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
