package metrics

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// FetchFunc reads one sample (from envd's /metrics).
type FetchFunc func(ctx context.Context) (Point, error)

// Sampler calls a FetchFunc every interval and adds the result to a Series.
type Sampler struct {
	series   *Series
	fetch    FetchFunc
	interval time.Duration
	log      *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// NewSampler returns a stopped sampler.
func NewSampler(series *Series, fetch FetchFunc, interval time.Duration, log *slog.Logger) *Sampler {
	if interval <= 0 {
		interval = time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	return &Sampler{series: series, fetch: fetch, interval: interval, log: log}
}

// Start starts sampling; a running sampler is left as it is.
func (s *Sampler) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go s.run(ctx, s.done)
}

// Running reports whether the sampler runs.
func (s *Sampler) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cancel != nil
}

// Stop stops sampling and waits for the goroutine to exit. Idempotent.
func (s *Sampler) Stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

func (s *Sampler) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fctx, cancel := context.WithTimeout(ctx, s.interval)
		p, err := s.fetch(fctx)
		cancel()
		if err != nil {
			failures++
			if ctx.Err() == nil && (failures == 1 || failures%60 == 0) {
				s.log.Debug("metrics sample failed", "err", err, "failures", failures)
			}
			continue
		}
		failures = 0
		s.series.Add(p)
	}
}
