package metrics

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var t0 = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)

func sample(at time.Time, cpu float64, mem uint64) Point {
	return Point{Time: at, CPUUsedPct: cpu, CPUCount: 2, MemUsed: mem, MemTotal: 1 << 30, DiskUsed: mem * 2, DiskTotal: 1 << 32}
}

func TestDefaultWindows(t *testing.T) {
	tests := []struct {
		tier Tier
		want time.Duration
	}{
		{DefaultTiers[0], 10 * time.Minute},
		{DefaultTiers[1], 2 * time.Hour},
		{DefaultTiers[2], 24 * time.Hour},
	}
	for _, tt := range tests {
		if got := tt.tier.Window(); got != tt.want {
			t.Errorf("window of %v×%d: got %v, want %v", tt.tier.Resolution, tt.tier.Len, got, tt.want)
		}
	}
}

func TestDownsampling(t *testing.T) {
	s := NewSeries(nil)
	// 20 s of 1 Hz samples: cpu = i, mem = 100*i.
	for i := range 20 {
		s.Add(sample(t0.Add(time.Duration(i)*time.Second), float64(i), uint64(100*i)))
	}
	now := t0.Add(19 * time.Second)

	fine := s.Points(0, now)
	if len(fine) != 20 {
		t.Fatalf("1 s tier: got %d points, want 20", len(fine))
	}
	for i, p := range fine {
		if p.CPUUsedPct != float64(i) || !p.Time.Equal(t0.Add(time.Duration(i)*time.Second)) {
			t.Errorf("1 s point %d: got cpu %v at %v", i, p.CPUUsedPct, p.Time)
		}
	}

	mid := s.Points(1, now)
	if len(mid) != 2 {
		t.Fatalf("10 s tier: got %d points, want 2", len(mid))
	}
	// t0 is on a 10 s boundary: buckets hold samples 0-9 and 10-19.
	wantCPU := []float64{4.5, 14.5}
	wantMem := []uint64{450, 1450}
	for i, p := range mid {
		if p.CPUUsedPct != wantCPU[i] || p.MemUsed != wantMem[i] || p.DiskUsed != 2*wantMem[i] {
			t.Errorf("10 s bucket %d: got cpu %v mem %d disk %d, want %v %d %d", i, p.CPUUsedPct, p.MemUsed, p.DiskUsed, wantCPU[i], wantMem[i], 2*wantMem[i])
		}
		if p.MemTotal != 1<<30 || p.CPUCount != 2 {
			t.Errorf("10 s bucket %d: totals not kept: %+v", i, p)
		}
	}

	coarse := s.Points(2, now)
	if len(coarse) != 1 || coarse[0].CPUUsedPct != 9.5 {
		t.Fatalf("1 min tier: got %+v, want one bucket averaging 9.5", coarse)
	}
}

func TestWindowExpiry(t *testing.T) {
	s := NewSeries([]Tier{{Resolution: time.Second, Len: 10}})
	for i := range 10 {
		s.Add(sample(t0.Add(time.Duration(i)*time.Second), float64(i), 1))
	}
	tests := []struct {
		name    string
		now     time.Duration
		want    int
		wantOld float64
	}{
		{"all in window", 9 * time.Second, 10, 0},
		{"five aged out", 14 * time.Second, 5, 5},
		{"all aged out", 30 * time.Second, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := s.Points(0, t0.Add(tt.now))
			if len(got) != tt.want {
				t.Fatalf("got %d points, want %d", len(got), tt.want)
			}
			if tt.want > 0 && got[0].CPUUsedPct != tt.wantOld {
				t.Errorf("oldest: got %v, want %v", got[0].CPUUsedPct, tt.wantOld)
			}
		})
	}
	// Wrap-around: a new sample 10 s later reuses slot 0 and drops the old.
	s.Add(sample(t0.Add(10*time.Second), 100, 1))
	got := s.Points(0, t0.Add(10*time.Second))
	if len(got) != 10 || got[len(got)-1].CPUUsedPct != 100 || got[0].CPUUsedPct != 1 {
		t.Fatalf("after wrap: got %d points (first %v, last %v), want 10 from 1 to 100", len(got), got[0].CPUUsedPct, got[len(got)-1].CPUUsedPct)
	}
	if last, ok := s.Last(); !ok || last.CPUUsedPct != 100 {
		t.Errorf("last: got %+v %v", last, ok)
	}
}

func TestFixedMemory(t *testing.T) {
	s := NewSeries(nil)
	for i := range 100000 {
		s.Add(sample(t0.Add(time.Duration(i)*time.Second), 1, 1))
	}
	for i, r := range s.rings {
		if len(r.slots) != DefaultTiers[i].Len || cap(r.slots) != DefaultTiers[i].Len {
			t.Errorf("tier %d: %d slots, want %d", i, len(r.slots), DefaultTiers[i].Len)
		}
	}
	if got := len(s.Points(2, t0.Add(99999*time.Second))); got != 1440 {
		t.Errorf("24 h tier after 27 h: got %d points, want 1440", got)
	}
}

func TestSamplerStartStop(t *testing.T) {
	var calls atomic.Int64
	s := NewSeries(nil)
	fail := atomic.Bool{}
	sm := NewSampler(s, func(ctx context.Context) (Point, error) {
		calls.Add(1)
		if fail.Load() {
			return Point{}, errors.New("envd down")
		}
		return Point{Time: time.Now(), CPUUsedPct: 7}, nil
	}, 5*time.Millisecond, nil)
	sm.Start()
	sm.Start() // idempotent: still one goroutine
	testutil.Eventually(t, testutil.Short, func() bool { return calls.Load() >= 5 }, "sampler did not sample")
	if p, ok := s.Last(); !ok || p.CPUUsedPct != 7 {
		t.Fatalf("last sample: got %+v %v", p, ok)
	}
	fail.Store(true)
	n := calls.Load()
	testutil.Eventually(t, testutil.Short, func() bool { return calls.Load() >= n+3 }, "sampler stopped after errors")
	sm.Stop()
	if sm.Running() {
		t.Fatal("running after Stop")
	}
	n = calls.Load()
	time.Sleep(30 * time.Millisecond)
	if got := calls.Load(); got != n {
		t.Errorf("sampled %d times after Stop", got-n)
	}
	sm.Stop() // idempotent
	// Restart after stop works (resume after pause).
	sm.Start()
	testutil.Eventually(t, testutil.Short, func() bool { return calls.Load() > n }, "no samples after restart")
	sm.Stop()
	goleak.VerifyNone(t)
}
