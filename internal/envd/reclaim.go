package envd

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ReclaimConfig configures the page-cache reclaimer.
type ReclaimConfig struct {
	// Interval between checks (default 5 s).
	Interval time.Duration
	// Threshold is the used fraction (total - available) / total above which
	// the page cache is dropped (default 0.8).
	Threshold float64
	// MemInfo returns total and available memory; default reads /proc/meminfo.
	MemInfo func() (total, available uint64, err error)
	// Drop drops the page cache; default writes 1 to /proc/sys/vm/drop_caches.
	Drop func() error
}

func (c *ReclaimConfig) fill() {
	if c.Interval == 0 {
		c.Interval = 5 * time.Second
	}
	if c.Threshold == 0 {
		c.Threshold = 0.8
	}
	if c.MemInfo == nil {
		c.MemInfo = func() (uint64, uint64, error) {
			mi, err := readMemInfo("/proc/meminfo")
			return mi.total, mi.available, err
		}
	}
	if c.Drop == nil {
		c.Drop = func() error { return os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0o200) }
	}
}

// reclaimer drops the guest page cache when memory runs high so that a
// later snapshot does not carry stale cache pages. It never runs while a
// snapshot is being prepared: pause waits for a running drop to finish.
type reclaimer struct {
	cfg ReclaimConfig
	log *slog.Logger

	mu     sync.Mutex // held for the whole of one check-and-drop
	paused bool

	drops    atomic.Int64
	warnOnce sync.Once
}

func newReclaimer(cfg ReclaimConfig, log *slog.Logger) *reclaimer {
	return &reclaimer{cfg: cfg, log: log}
}

func (r *reclaimer) run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.tick()
		}
	}
}

// tick performs one check; it reports whether the cache was dropped.
func (r *reclaimer) tick() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused {
		return false
	}
	total, avail, err := r.cfg.MemInfo()
	if err != nil || total == 0 {
		return false
	}
	used := float64(total-min(avail, total)) / float64(total)
	if used <= r.cfg.Threshold {
		return false
	}
	if err := r.cfg.Drop(); err != nil {
		r.warnOnce.Do(func() { r.log.Debug("page-cache reclaimer cannot drop caches", "err", err) })
		return false
	}
	r.drops.Add(1)
	return true
}

// pause stops the reclaimer; it returns once no drop is in progress.
func (r *reclaimer) pause() {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
}

func (r *reclaimer) resume() {
	r.mu.Lock()
	r.paused = false
	r.mu.Unlock()
}

func (r *reclaimer) isPaused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paused
}
