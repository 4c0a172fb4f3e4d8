package events

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// HubStore is what the Hub reads.
type HubStore interface {
	ListEventsAfter(ctx context.Context, afterID int64, limit int) ([]store.Event, error)
	LastEventID(ctx context.Context) (int64, error)
}

// Hub fans new events out to live subscribers. One goroutine (Run) polls
// the store for events after the last one it saw, every Interval or as
// soon as Notify is called, and hands each batch to every subscriber. It
// polls the table rather than trusting in-process notifications, so a
// replica streams events other replicas wrote.
//
// On PostgreSQL an identity value is taken at insert but becomes visible at
// commit, so a later id can be seen first; the Hub waits up to GapWait for
// a missing id before it moves past it (a rolled-back insert leaves a gap
// that never fills).
type Hub struct {
	Store    HubStore
	Interval time.Duration // default 500 ms
	GapWait  time.Duration // default 2 s
	Logger   *slog.Logger

	mu       sync.Mutex
	subs     map[*Sub]struct{}
	last     int64
	wake     chan struct{}
	ready    chan struct{} // closed once Run knows where the log ends
	initOnce sync.Once
}

// Sub is one subscriber. C carries batches of new events (every team's:
// the subscriber filters); Lagged is signalled when a batch was dropped
// because C was full, and the subscriber must catch up from the store.
type Sub struct {
	C      chan []store.Event
	Lagged chan struct{}
}

func (h *Hub) init() {
	h.initOnce.Do(func() {
		h.subs = map[*Sub]struct{}{}
		h.wake = make(chan struct{}, 1)
		h.ready = make(chan struct{})
		if h.Interval <= 0 {
			h.Interval = 500 * time.Millisecond
		}
		if h.GapWait <= 0 {
			h.GapWait = 2 * time.Second
		}
		if h.Logger == nil {
			h.Logger = slog.Default()
		}
	})
}

// Subscribe registers a subscriber; call Unsubscribe when done.
func (h *Hub) Subscribe() *Sub {
	h.init()
	s := &Sub{C: make(chan []store.Event, 64), Lagged: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Unsubscribe forgets s.
func (h *Hub) Unsubscribe(s *Sub) {
	h.init()
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// Subscribers is the number of live subscribers.
func (h *Hub) Subscribers() int {
	h.init()
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Ready is closed once Run has read where the log ends: every event
// stored after that is broadcast, so a subscriber reads its backlog from the
// store only after Ready (Follow does).
func (h *Hub) Ready() <-chan struct{} {
	h.init()
	return h.ready
}

// Notify makes the next poll happen now (an event was just written here).
func (h *Hub) Notify() {
	h.init()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Run polls until ctx ends.
func (h *Hub) Run(ctx context.Context) {
	h.init()
	for ctx.Err() == nil {
		last, err := h.Store.LastEventID(ctx)
		if err == nil {
			h.last = last
			close(h.ready)
			break
		}
		h.Logger.Warn("event hub: reading the last event id failed", "err", err)
		sleep(ctx, h.Interval)
	}
	tick := time.NewTicker(h.Interval)
	defer tick.Stop()
	var gapSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-h.wake:
		}
		for ctx.Err() == nil {
			evs, err := h.Store.ListEventsAfter(ctx, h.last, 1000)
			if err != nil {
				if ctx.Err() == nil {
					h.Logger.Warn("event hub poll failed", "err", err)
				}
				break
			}
			cut := len(evs)
			for i, e := range evs {
				if e.ID != h.last+int64(i)+1 {
					cut = i
					break
				}
			}
			if cut < len(evs) {
				if gapSince.IsZero() {
					gapSince = time.Now()
				}
				if time.Since(gapSince) < h.GapWait {
					evs = evs[:cut]
				} else {
					gapSince = time.Time{}
				}
			} else {
				gapSince = time.Time{}
			}
			if len(evs) == 0 {
				break
			}
			h.last = evs[len(evs)-1].ID
			h.broadcast(evs)
			if len(evs) < 1000 {
				break
			}
		}
	}
}

func (h *Hub) broadcast(evs []store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.C <- evs:
		default:
			select {
			case s.Lagged <- struct{}{}:
			default:
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
