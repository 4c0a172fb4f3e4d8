// Package metrics keeps the host agent's per-capsule guest metrics: a
// sampler that reads envd's /metrics every interval, and fixed-window ring
// buffers at several resolutions (by default 10 min at 1 s, 2 h at 10 s and
// 24 h at 1 min).
//
// Invariants:
//   - Memory per series is fixed at creation (one slot per bucket of every
//     tier); nothing grows with uptime.
//   - A bucket holds the average of the samples whose time falls into it
//     (CPU %, memory and disk used) and the latest totals; a slot whose
//     bucket index is not the current one is stale and never returned.
//   - A Sampler's goroutine exits before Stop returns.
package metrics

import (
	"sync"
	"time"
)

// Point is one guest-side sample (or bucket average).
type Point struct {
	Time       time.Time
	CPUUsedPct float64
	CPUCount   int
	MemUsed    uint64
	MemTotal   uint64
	DiskUsed   uint64
	DiskTotal  uint64
}

// Tier is one ring: Len buckets of Resolution each.
type Tier struct {
	Resolution time.Duration
	Len        int
}

// Window returns the time span the tier covers.
func (t Tier) Window() time.Duration { return t.Resolution * time.Duration(t.Len) }

// DefaultTiers: 10 min at 1 s, 2 h at 10 s, 24 h at 1 min.
var DefaultTiers = []Tier{
	{Resolution: time.Second, Len: 600},
	{Resolution: 10 * time.Second, Len: 720},
	{Resolution: time.Minute, Len: 1440},
}

type slot struct {
	idx                 int64 // bucket index (unix time / resolution); 0 = empty
	n                   int
	cpu                 float64
	mem, disk           float64
	cpuCount            int
	memTotal, diskTotal uint64
}

type ring struct {
	res   time.Duration
	slots []slot
}

func (r *ring) add(p Point) {
	idx := p.Time.UnixNano()/int64(r.res) + 1 // +1 keeps index 0 meaning "empty"
	s := &r.slots[int(idx%int64(len(r.slots)))]
	if s.idx != idx {
		*s = slot{idx: idx}
	}
	s.n++
	s.cpu += p.CPUUsedPct
	s.mem += float64(p.MemUsed)
	s.disk += float64(p.DiskUsed)
	s.cpuCount, s.memTotal, s.diskTotal = p.CPUCount, p.MemTotal, p.DiskTotal
}

func (r *ring) points(now time.Time) []Point {
	cur := now.UnixNano()/int64(r.res) + 1
	oldest := cur - int64(len(r.slots)) + 1
	out := make([]Point, 0, len(r.slots))
	for idx := oldest; idx <= cur; idx++ {
		if idx <= 0 {
			continue
		}
		s := r.slots[int(idx%int64(len(r.slots)))]
		if s.idx != idx || s.n == 0 {
			continue
		}
		n := float64(s.n)
		out = append(out, Point{
			Time:       time.Unix(0, (idx-1)*int64(r.res)),
			CPUUsedPct: s.cpu / n,
			CPUCount:   s.cpuCount,
			MemUsed:    uint64(s.mem / n),
			MemTotal:   s.memTotal,
			DiskUsed:   uint64(s.disk / n),
			DiskTotal:  s.diskTotal,
		})
	}
	return out
}

// Series is the ring buffers of one capsule. Safe for concurrent use.
type Series struct {
	mu    sync.Mutex
	tiers []Tier
	rings []ring
	last  Point
}

// NewSeries returns an empty series with the given tiers (nil = DefaultTiers).
func NewSeries(tiers []Tier) *Series {
	if tiers == nil {
		tiers = DefaultTiers
	}
	s := &Series{tiers: tiers, rings: make([]ring, len(tiers))}
	for i, t := range tiers {
		s.rings[i] = ring{res: t.Resolution, slots: make([]slot, t.Len)}
	}
	return s
}

// Tiers returns the series' tiers.
func (s *Series) Tiers() []Tier { return s.tiers }

// Add records p in every tier.
func (s *Series) Add(p Point) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.rings {
		s.rings[i].add(p)
	}
	if !p.Time.Before(s.last.Time) {
		s.last = p
	}
}

// Last returns the newest sample and whether there is one.
func (s *Series) Last() (Point, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, !s.last.Time.IsZero()
}

// Points returns the buckets of tier i that lie within the tier's window
// ending at now, oldest first.
func (s *Series) Points(i int, now time.Time) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i >= len(s.rings) {
		return nil
	}
	return s.rings[i].points(now)
}
