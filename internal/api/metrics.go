package api

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wrenn-dev/wrenn/internal/store"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry, st store.Store, log *slog.Logger) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wrenn_http_requests_total", Help: "HTTP requests by method, route and status.",
		}, []string{"method", "route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wrenn_http_request_duration_seconds", Help: "HTTP request latency by method and route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"method", "route"}),
	}
	reg.MustRegister(m.requests, m.latency, capsuleCollector{st: st, log: log})
	return m
}

// capsuleCollector reports capsules by state at scrape time.
type capsuleCollector struct {
	st  store.Store
	log *slog.Logger
}

var capsulesDesc = prometheus.NewDesc("wrenn_capsules", "Capsules by state.", []string{"state"}, nil)

func (capsuleCollector) Describe(ch chan<- *prometheus.Desc) { ch <- capsulesDesc }

func (c capsuleCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.st.CountCapsulesByStatus(ctx)
	if err != nil {
		c.log.Warn("metrics: count capsules", "err", err)
		return
	}
	for _, s := range []store.CapsuleStatus{
		store.CapsulePending, store.CapsuleStarting, store.CapsuleRunning, store.CapsulePaused,
		store.CapsuleHibernated, store.CapsuleStopped, store.CapsuleError, store.CapsuleMissing,
	} {
		ch <- prometheus.MustNewConstMetric(capsulesDesc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
