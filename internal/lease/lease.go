// Package lease runs background jobs on one control-plane replica at a
// time. Replicas share the store (PostgreSQL in a fleet); each job has a
// named lease row that one replica holds by renewing it before it expires.
// A replica that stops releases its leases; one that dies loses them when
// they expire, and another replica takes the job over on its next tick.
//
// Invariants:
//   - A Keeper runs a job's pass only after taking or renewing the job's
//     lease in the same tick, with a TTL of one and a half intervals
//     (TTLFor), so a holder that is alive keeps the job and a dead one
//     hands it over within one TTL plus one tick.
//   - A pass longer than the TTL may overlap with the next holder's: the
//     jobs this package runs are idempotent passes over the store
//     (reconcile, roll-ups, flushes, build claims are conditional
//     updates), so an overlap repeats work and never corrupts it.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Store is the part of the store leases need.
type Store interface {
	TryLease(ctx context.Context, name, holder string, now, expiresAt time.Time) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// MinTTL is the shortest lease a Keeper takes (store round trips and
// clock skew between replicas must fit well inside it).
const MinTTL = 2 * time.Second

// TTLFor is the lease length for a job run every interval: one and a half
// intervals, so a live holder renews it in time on every tick and a dead
// one hands the job over within one and a half intervals.
func TTLFor(every time.Duration) time.Duration { return max(every*3/2, MinTTL) }

// Keeper takes and renews leases for one replica.
type Keeper struct {
	store  Store
	holder string
	log    *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time

	mu   sync.Mutex
	held map[string]bool
}

// New returns a Keeper for the replica holder ("" = NewHolder()).
func New(s Store, holder string, log *slog.Logger) *Keeper {
	if holder == "" {
		holder = NewHolder()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keeper{store: s, holder: holder, log: log.With("component", "lease", "holder", holder), held: map[string]bool{}}
}

// NewHolder returns a replica name unique across processes: the host name
// and a random suffix.
func NewHolder() string {
	h, _ := os.Hostname()
	if h == "" {
		h = "replica"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return h + "-" + hex.EncodeToString(b)
}

// Holder is the replica's name.
func (k *Keeper) Holder() string { return k.holder }

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

// Hold takes or renews the lease name for ttl (at least MinTTL) and
// reports whether this replica holds it. A store error counts as not
// holding (the job waits for the next tick).
func (k *Keeper) Hold(ctx context.Context, name string, ttl time.Duration) bool {
	ttl = max(ttl, MinTTL)
	now := k.now()
	ok, err := k.store.TryLease(ctx, name, k.holder, now, now.Add(ttl))
	if err != nil {
		if ctx.Err() == nil {
			k.log.Warn("lease: cannot take or renew", "lease", name, "err", err)
		}
		ok = false
	}
	k.mu.Lock()
	was := k.held[name]
	k.held[name] = ok
	k.mu.Unlock()
	if ok != was {
		if ok {
			k.log.Info("lease taken: this replica runs the job", "lease", name)
		} else {
			k.log.Info("lease lost: another replica runs the job", "lease", name)
		}
	}
	return ok
}

// Gate returns a function reporting, each time it is called, whether this
// replica holds name (taking or renewing it with TTLFor(every)): the form
// background runners accept.
func (k *Keeper) Gate(name string, every time.Duration) func(context.Context) bool {
	return func(ctx context.Context) bool { return k.Hold(ctx, name, TTLFor(every)) }
}

// Loop calls pass every interval while ctx lives, on the ticks at which
// this replica holds name; it releases the lease when ctx ends.
func (k *Keeper) Loop(ctx context.Context, name string, every time.Duration, pass func(context.Context) error) {
	defer k.Release(name)
	gate := k.Gate(name, every)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !gate(ctx) {
				continue
			}
			if err := pass(ctx); err != nil && ctx.Err() == nil {
				k.log.Warn("background pass failed", "lease", name, "err", err)
			}
		}
	}
}

// Release gives up name if this replica holds it (on shutdown, so another
// replica takes the job at once instead of after the TTL).
func (k *Keeper) Release(name string) {
	k.mu.Lock()
	held := k.held[name]
	delete(k.held, name)
	k.mu.Unlock()
	if !held {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.store.ReleaseLease(ctx, name, k.holder); err != nil {
		k.log.Warn("lease: release", "lease", name, "err", err)
	}
}
