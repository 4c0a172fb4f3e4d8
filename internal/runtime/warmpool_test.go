package runtime_test

import (
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

func TestPoolSizerTarget(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	burst := func(s *runtime.PoolSizer, n int, every time.Duration) {
		for i := range n {
			s.Demand(now.Add(-time.Duration(n-i) * every))
		}
	}
	tests := []struct {
		name      string
		n         int
		setup     func(*runtime.PoolSizer)
		ready     int
		memFits   int
		want      int
		wantLimit string
	}{
		{name: "fixed", n: 3, memFits: 100, want: 3},
		{name: "off", n: 0, memFits: 100, want: 0},
		{name: "auto idle keeps the minimum", n: runtime.WarmPoolAuto, memFits: 100, want: runtime.WarmPoolAutoMin},
		{
			name: "auto one create", n: runtime.WarmPoolAuto, memFits: 100, want: 2,
			setup: func(s *runtime.PoolSizer) { s.Demand(now.Add(-time.Second)); s.Refilled(time.Second) },
		},
		{
			// 60 creates a minute, 3 s to make one: 3 in flight, plus one.
			name: "auto grows with the create rate", n: runtime.WarmPoolAuto, memFits: 100, want: 4,
			setup: func(s *runtime.PoolSizer) { burst(s, 60, time.Second); s.Refilled(3 * time.Second) },
		},
		{
			name: "auto capped", n: runtime.WarmPoolAuto, memFits: 100, want: runtime.WarmPoolAutoMax,
			setup: func(s *runtime.PoolSizer) { burst(s, 600, 100*time.Millisecond); s.Refilled(5 * time.Second) },
		},
		{
			name: "auto shrinks when the creates stop", n: runtime.WarmPoolAuto, memFits: 100, want: runtime.WarmPoolAutoMin,
			setup: func(s *runtime.PoolSizer) {
				s.Demand(now.Add(-runtime.WarmPoolIdle - time.Second))
				s.Refilled(time.Second)
			},
		},
		{
			name: "old creates leave the rate", n: runtime.WarmPoolAuto, memFits: 100, want: 2,
			setup: func(s *runtime.PoolSizer) {
				for i := range 100 {
					s.Demand(now.Add(-2*runtime.WarmPoolWindow + time.Duration(i)*time.Millisecond))
				}
				s.Demand(now.Add(-time.Second))
				s.Refilled(3 * time.Second)
			},
		},
		{name: "memory caps", n: 4, ready: 1, memFits: 1, want: 2, wantLimit: "memory"},
		{name: "memory short drains", n: 4, ready: 3, memFits: -2, want: 1, wantLimit: "memory"},
		{name: "no memory", n: runtime.WarmPoolAuto, ready: 0, memFits: -1, want: 0, wantLimit: "memory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := runtime.NewPoolSizer(tt.n)
			if tt.setup != nil {
				tt.setup(&s)
			}
			got, limit := s.Target(now, tt.ready, tt.memFits)
			if got != tt.want || limit != tt.wantLimit {
				t.Errorf("Target = %d, %q; want %d, %q", got, limit, tt.want, tt.wantLimit)
			}
		})
	}
}

func TestPoolSizerCarryOver(t *testing.T) {
	now := time.Now()
	s := runtime.NewPoolSizer(runtime.WarmPoolAuto)
	for i := range 60 {
		s.Demand(now.Add(-time.Duration(60-i) * time.Second))
	}
	s.Refilled(3 * time.Second)
	n := runtime.NewPoolSizer(runtime.WarmPoolAuto)
	n.CarryOver(s)
	if got, _ := n.Target(now, 0, 100); got != 4 {
		t.Errorf("after CarryOver Target = %d, want 4", got)
	}
}

func TestWarmPoolMemoryReserve(t *testing.T) {
	if got := runtime.WarmPoolMemoryReserve(1 << 30); got != 512<<20 {
		t.Errorf("1 GiB host: %d", got)
	}
	if got := runtime.WarmPoolMemoryReserve(64 << 30); got != 64<<30/10 {
		t.Errorf("64 GiB host: %d", got)
	}
	total, avail, err := runtime.MemInfo()
	if err != nil || total == 0 || avail == 0 || avail > total {
		t.Fatalf("MemInfo = %d, %d, %v", total, avail, err)
	}
}
