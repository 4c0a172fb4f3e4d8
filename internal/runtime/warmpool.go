package runtime

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"strconv"
	"time"
)

// Warm pool sizing (docs/PERFORMANCE.md). SetWarmPool(template,
// WarmPoolAuto) asks a driver to size the pool by demand: at least
// WarmPoolAutoMin, at most WarmPoolAutoMax, enough to cover the creates
// expected while one pool capsule is being made, and never more than
// the host's free memory (above WarmPoolMemoryReserve) holds.
const (
	// WarmPoolAuto as the size of SetWarmPool: sized by demand.
	WarmPoolAuto = -1
	// WarmPoolAutoMin is the size of an idle auto pool.
	WarmPoolAutoMin = 1
	// WarmPoolAutoMax caps an auto pool.
	WarmPoolAutoMax = 8
	// WarmPoolWindow is how far back the create rate is measured.
	WarmPoolWindow = time.Minute
	// WarmPoolIdle: an auto pool with no create for this long shrinks to
	// WarmPoolAutoMin.
	WarmPoolIdle = 10 * time.Minute
)

// DefaultWarmPools are the pools `wrenn up` and `wrenn agent` keep unless
// --warm-pool says otherwise: base and minimal, sized by demand.
func DefaultWarmPools() map[string]int {
	return map[string]int{"base": WarmPoolAuto, "minimal": WarmPoolAuto}
}

// WarmPoolMemoryReserve is the free memory (MemAvailable) warm pools
// leave to real capsules: 10 % of the host's memory, at least 512 MiB.
func WarmPoolMemoryReserve(totalBytes uint64) uint64 {
	return max(totalBytes/10, 512<<20)
}

// WarmPoolStatus is one pool as a driver reports it (host capabilities,
// metrics).
type WarmPoolStatus struct {
	Template string `json:"template"`
	// Ready capsules are started, answered /health and are frozen.
	Ready int `json:"ready"`
	// Target is the size the pool is filled or drained to now.
	Target int `json:"target"`
	// Auto: sized by demand (between WarmPoolAutoMin and Max); else Max
	// is the configured size.
	Auto bool `json:"auto"`
	Max  int  `json:"max"`
	// Hits and Misses count creates of this template that took a pool
	// capsule and that found the pool empty.
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// Limit says what holds Target below the demand: "memory" (the
	// host's free memory) or "" (nothing).
	Limit string `json:"limit,omitempty"`
}

// WarmPoolReporter is implemented by WarmPoolers that report their pools.
type WarmPoolReporter interface {
	WarmPools() []WarmPoolStatus
}

// PoolSizer computes a warm pool's target size from its configuration,
// the recent create rate and free memory. It is not safe for concurrent
// use (the driver guards it with its pool lock).
type PoolSizer struct {
	// Min and Max bound the target; Auto sizes between them by demand.
	Min, Max int
	Auto     bool
	demand   []time.Time // creates in the last WarmPoolWindow, oldest first
	last     time.Time   // the last create
	refill   time.Duration
}

// NewPoolSizer is the sizer of SetWarmPool(template, n).
func NewPoolSizer(n int) PoolSizer {
	if n == WarmPoolAuto {
		return PoolSizer{Min: WarmPoolAutoMin, Max: WarmPoolAutoMax, Auto: true}
	}
	n = max(n, 0)
	return PoolSizer{Min: n, Max: n}
}

// CarryOver keeps old's demand history and refill time (a resize keeps
// what the pool learnt).
func (s *PoolSizer) CarryOver(old PoolSizer) {
	s.demand, s.last, s.refill = old.demand, old.last, old.refill
}

// Demand records one create of the pool's template at now.
func (s *PoolSizer) Demand(now time.Time) {
	s.trim(now)
	s.demand = append(s.demand, now)
	s.last = now
}

// Refilled records how long making one pool capsule took (a moving
// average: the time a taken capsule takes to be replaced).
func (s *PoolSizer) Refilled(d time.Duration) {
	if s.refill == 0 {
		s.refill = d
		return
	}
	s.refill = (3*s.refill + d) / 4
}

func (s *PoolSizer) trim(now time.Time) {
	i := 0
	for i < len(s.demand) && now.Sub(s.demand[i]) > WarmPoolWindow {
		i++
	}
	s.demand = s.demand[i:]
}

// Target is the size to fill or drain to now. memFits is how many more
// pool capsules fit in the host's free memory above the reserve (may be
// negative: that many should go); ready is how many the pool holds. limit
// is "memory" when memory holds the target below the demand.
func (s *PoolSizer) Target(now time.Time, ready, memFits int) (target int, limit string) {
	want := s.Max
	if s.Auto {
		s.trim(now)
		want = s.Min
		if !s.last.IsZero() && now.Sub(s.last) < WarmPoolIdle {
			// Creates expected while one capsule is made, plus one for a
			// burst; at least what the last window took at once.
			refill := max(s.refill, 100*time.Millisecond)
			rate := float64(len(s.demand)) / WarmPoolWindow.Seconds()
			want = max(want, int(math.Ceil(rate*refill.Seconds()))+1)
			if len(s.demand) > 1 {
				want = max(want, 2)
			}
		}
		want = min(want, s.Max)
	}
	if c := ready + memFits; c < want {
		return max(c, 0), "memory"
	}
	return want, ""
}

// MemInfo returns MemTotal and MemAvailable from /proc/meminfo, in bytes.
func MemInfo() (total, available uint64, err error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			continue
		}
		switch string(f[0]) {
		case "MemTotal:":
			total = v << 10
		case "MemAvailable:":
			available = v << 10
		}
	}
	return total, available, nil
}
