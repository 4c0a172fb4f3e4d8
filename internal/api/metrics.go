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
	reg.MustRegister(m.requests, m.latency, capsuleCollector{st: st, log: log}, warmPoolCollector{st: st, log: log})
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

// warmPoolCollector reports the hosts' warm pools (as their last
// heartbeat or host-info refresh gave them) at scrape time.
type warmPoolCollector struct {
	st  store.Store
	log *slog.Logger
}

var (
	warmReadyDesc  = prometheus.NewDesc("wrenn_warm_pool_ready", "Warm-pool capsules ready, by host and template.", []string{"host", "template"}, nil)
	warmTargetDesc = prometheus.NewDesc("wrenn_warm_pool_target", "Warm-pool target size, by host and template.", []string{"host", "template"}, nil)
	warmHitsDesc   = prometheus.NewDesc("wrenn_warm_pool_hits_total", "Creates that took a warm-pool capsule, by host and template.", []string{"host", "template"}, nil)
	warmMissDesc   = prometheus.NewDesc("wrenn_warm_pool_misses_total", "Creates that found the warm pool empty, by host and template.", []string{"host", "template"}, nil)
)

func (warmPoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- warmReadyDesc
	ch <- warmTargetDesc
	ch <- warmHitsDesc
	ch <- warmMissDesc
}

func (c warmPoolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hosts, err := c.st.ListHosts(ctx)
	if err != nil {
		c.log.Warn("metrics: list hosts", "err", err)
		return
	}
	for _, h := range hosts {
		for _, p := range hostCapabilities(h).WarmPools {
			ch <- prometheus.MustNewConstMetric(warmReadyDesc, prometheus.GaugeValue, float64(p.Ready), h.ID, p.Template)
			ch <- prometheus.MustNewConstMetric(warmTargetDesc, prometheus.GaugeValue, float64(p.Target), h.ID, p.Template)
			ch <- prometheus.MustNewConstMetric(warmHitsDesc, prometheus.CounterValue, float64(p.Hits), h.ID, p.Template)
			ch <- prometheus.MustNewConstMetric(warmMissDesc, prometheus.CounterValue, float64(p.Misses), h.ID, p.Template)
		}
	}
}
