package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// DefaultColdSpares is the number of spares the agent keeps by default
// (Config.ColdSpares).
const DefaultColdSpares = 2

// OpSpare makes a spare: the OpCreate steps dir, network (held) and a
// "disk" step in place of rootfs, then state.
const OpSpare = "spare"

// spareSet holds the spares: the template-independent host pieces of a
// capsule made ahead of a cold create (issue 21) — a key, a user namespace
// id range with its pinned user namespace, a network namespace with its
// veth, nftables chain and sets and rate limits set up held (no egress,
// as a warm-pool capsule's), and a blank disk image of the default size
// on a loop device, mounted. A cold Create that fits (default disk size,
// runc) takes one and does only the template's part on its path: the
// network policy (releasing the hold is one nftables rule), the
// template's idmapped clone and the overlay,
// /etc, the bundle, the state. One filler goroutine refills them one at
// a time, yielding to real creates as warm-pool refills do.
//
// A spare's directory holds a state.json marked pool, so Recover cleans
// it like an unfinished capsule (its network, mounts, loop device, user
// namespace pin and files go, and Sweep removes anything left by key);
// Close releases the spares still held.
type spareSet struct {
	mu      sync.Mutex
	ready   []*record
	target  int
	kick    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	hits    uint64
	misses  uint64
}

// startSpares starts the filler once (from Recover: a spare made before
// Recover's sweep would be swept).
func (d *Driver) startSpares() {
	sp := &d.spares
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.started || d.cfg.ColdSpares <= 0 || d.rt.runsc || d.closed.Load() {
		return
	}
	sp.started = true
	sp.target = d.cfg.ColdSpares
	sp.kick = make(chan struct{}, 1)
	sp.ctx, sp.cancel = context.WithCancel(context.Background())
	sp.wg.Add(1)
	go d.fillSpares()
}

// SpareCount returns how many spares are ready, and how many cold creates
// took one (hits) or found none (misses).
func (d *Driver) SpareCount() (ready int, hits, misses uint64) {
	sp := &d.spares
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.ready), sp.hits, sp.misses
}

func (d *Driver) fillSpares() {
	sp := &d.spares
	defer sp.wg.Done()
	failures := 0
	for {
		sp.mu.Lock()
		need := sp.target - len(sp.ready)
		sp.mu.Unlock()
		if need <= 0 || failures > 0 {
			wait := time.Second
			if failures > 0 {
				wait = time.Duration(min(failures, 30)) * time.Second
			}
			select {
			case <-sp.ctx.Done():
				return
			case <-sp.kick:
			case <-time.After(wait):
				failures = 0
			}
			continue
		}
		if d.pools.waitIdle(sp.ctx) != nil {
			return
		}
		d.pools.warm.Lock() // one background capsule piece at a time
		rec, err := d.makeSpare(sp.ctx)
		d.pools.warm.Unlock()
		if err != nil {
			if sp.ctx.Err() != nil {
				return
			}
			failures++
			d.log.Warn("cold spares: cannot make one", "err", err)
			continue
		}
		sp.mu.Lock()
		if sp.ctx.Err() != nil {
			sp.mu.Unlock()
			d.releaseSpare(rec)
			return
		}
		sp.ready = append(sp.ready, rec)
		sp.mu.Unlock()
	}
}

// makeSpare runs the OpSpare steps, each after waiting for real creates.
func (d *Driver) makeSpare(ctx context.Context) (*record, error) {
	key := newKey()
	rec := &record{
		ID: "spare-" + key, Key: key, State: runtime.StateCreated, CreatedAt: time.Now().UTC(),
		Pool: true, Spec: runtime.Spec{ID: "spare-" + key, DiskSizeMB: d.cfg.DefaultDiskSizeMB},
	}
	s := d.createSteps(OpSpare, rec, template.Template{}, nil)
	p := d.paths(key)
	if err := errors.Join(
		s.Replace("rootfs", runtime.Step{
			Name: "disk",
			Do: func(ctx context.Context) error {
				if rec.IDBase == 0 {
					return rootfs.PrepareDisk(ctx, p, rec.Spec.DiskSizeMB, d.blankDir())
				}
				ns, err := openUserns(rec.IDBase)
				if err != nil {
					return err
				}
				defer unix.Close(ns)
				return rootfs.PrepareDisk(ctx, p, rec.Spec.DiskSizeMB, d.blankDir(), rootfs.WithIDMap(ns, rec.IDBase))
			},
			Undo: func(context.Context) error { return rootfs.Unmount(p) },
		}),
		s.Remove("etc"),
		s.Remove("bundle"),
	); err != nil {
		return nil, err
	}
	for _, name := range s.Names() {
		_ = s.Wrap(name, func(ctx context.Context, next func(context.Context) error) error {
			if err := d.pools.waitIdle(ctx); err != nil {
				return err
			}
			return next(ctx)
		})
	}
	if err := d.runSteps(ctx, s); err != nil {
		return nil, err
	}
	return rec, nil
}

func (d *Driver) blankDir() string { return d.cfg.StateDir + "/blank" }

// takeSpare hands a spare that fits spec (normalized) to a cold create,
// or nil.
func (d *Driver) takeSpare(spec runtime.Spec) *record {
	sp := &d.spares
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.started || sp.ctx.Err() != nil || spec.DiskSizeMB != d.cfg.DefaultDiskSizeMB {
		return nil
	}
	if len(sp.ready) == 0 {
		sp.misses++
		return nil
	}
	sp.hits++
	rec := sp.ready[0]
	sp.ready = sp.ready[1:]
	select {
	case sp.kick <- struct{}{}:
	default:
	}
	return rec
}

// useSpare turns the OpCreate steps of rec (which has the spare's key, id
// base and network) into the spare's path: network only sets the policy
// (a default one releases the hold) and rootfs only mounts the overlay.
// The Undos stay: a failure releases the spare's pieces with the capsule.
func (d *Driver) useSpare(s *runtime.Steps, rec *record, tmpl template.Template) error {
	p := d.paths(rec.Key)
	return errors.Join(
		s.Wrap("network", func(context.Context, func(context.Context) error) error {
			d.net.Label(rec.Key, rec.ID)
			return d.net.SetPolicy(rec.Net, rec.Spec.AllowInternet, rec.Spec.Network)
		}),
		s.Wrap("rootfs", func(context.Context, func(context.Context) error) error {
			if rec.IDBase == 0 {
				return rootfs.MountOverlay(p, tmpl.Rootfs)
			}
			// The spare's pinned user namespace (same mapping as
			// openUserns's, without forking a helper on the path).
			ns, err := unix.Open(filepath.Join(p.Dir, usernsFile), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("container: spare user namespace: %w", err)
			}
			defer unix.Close(ns)
			return rootfs.MountOverlay(p, tmpl.Rootfs, rootfs.WithIDMap(ns, rec.IDBase))
		}),
	)
}

func (d *Driver) releaseSpare(rec *record) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d.release(ctx, rec)
	_ = os.RemoveAll(d.paths(rec.Key).Dir)
}

// closeSpares stops the filler and releases the spares.
func (d *Driver) closeSpares() {
	for _, rec := range d.stopSpares() {
		d.releaseSpare(rec)
	}
}

// stopSpares stops the filler (if it runs) and hands over the spares it
// made, which the driver then no longer holds.
func (d *Driver) stopSpares() []*record {
	sp := &d.spares
	sp.mu.Lock()
	if !sp.started {
		sp.mu.Unlock()
		return nil
	}
	sp.cancel()
	sp.mu.Unlock()
	sp.wg.Wait()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	all := sp.ready
	sp.ready = nil
	return all
}
