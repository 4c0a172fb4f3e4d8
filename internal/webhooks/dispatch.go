package webhooks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// Dispatcher drains the outbox: it finds endpoints with due deliveries,
// leases each (so one replica delivers to it), and posts its pending
// deliveries in order, signed with the endpoint's current secret.
type Dispatcher struct {
	Store  store.Store
	Sealer *Sealer
	Guard  *Guard
	Logger *slog.Logger
	// Interval between outbox polls (default 1 s); Notify polls at once.
	Interval time.Duration
	// Timeout per delivery attempt (default 10 s).
	Timeout time.Duration
	// RetryWindow is how long a delivery is retried (default 24 h).
	RetryWindow time.Duration
	// BaseBackoff is the first retry delay (default 5 s); it doubles per
	// attempt up to MaxBackoff (default 1 h), with ±20 % jitter.
	BaseBackoff, MaxBackoff time.Duration
	// Lease is how long an endpoint's lease lasts (default 1 min); it is
	// renewed before each delivery.
	Lease time.Duration
	// Workers bounds the endpoints delivered to at once (default 8).
	Workers int
	// Owner names this replica in leases (default random).
	Owner string
	// Now is the clock (tests).
	Now func() time.Time

	initOnce sync.Once
	client   *http.Client
	wake     chan struct{}
}

func (d *Dispatcher) init() {
	d.initOnce.Do(func() {
		def := func(p *time.Duration, v time.Duration) {
			if *p <= 0 {
				*p = v
			}
		}
		def(&d.Interval, time.Second)
		def(&d.Timeout, 10*time.Second)
		def(&d.RetryWindow, 24*time.Hour)
		def(&d.BaseBackoff, 5*time.Second)
		def(&d.MaxBackoff, time.Hour)
		def(&d.Lease, time.Minute)
		if d.Workers <= 0 {
			d.Workers = 8
		}
		if d.Owner == "" {
			b := make([]byte, 8)
			_, _ = rand.Read(b)
			d.Owner = "cp-" + hex.EncodeToString(b)
		}
		if d.Now == nil {
			d.Now = time.Now
		}
		if d.Logger == nil {
			d.Logger = slog.Default()
		}
		if d.Guard == nil {
			d.Guard = &Guard{}
		}
		dialer := &net.Dialer{Timeout: 5 * time.Second, Control: d.Guard.Control}
		tr := &http.Transport{
			Proxy:                 nil, // never through an environment proxy: the guard checks the real peer
			DialContext:           dialer.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: d.Timeout,
		}
		d.client = &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
		d.wake = make(chan struct{}, 1)
	})
}

// Notify makes the dispatcher poll now.
func (d *Dispatcher) Notify() {
	d.init()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) {
	d.init()
	tick := time.NewTicker(d.Interval)
	defer tick.Stop()
	sem := make(chan struct{}, d.Workers)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		active = map[string]bool{}
	)
	defer wg.Wait()
	for {
		ids, err := d.Store.DueWebhooks(ctx, d.Now(), 100)
		if err != nil && ctx.Err() == nil {
			d.Logger.Warn("webhook outbox poll failed", "err", err)
		}
		for _, id := range ids {
			mu.Lock()
			busy := active[id]
			if !busy {
				active[id] = true
			}
			mu.Unlock()
			if busy {
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				defer func() {
					<-sem
					mu.Lock()
					delete(active, id)
					mu.Unlock()
					// A Notify that came while this endpoint was busy found
					// it active and skipped it: poll again now.
					d.Notify()
				}()
				d.drain(ctx, id)
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.wake:
		}
	}
}

// drain delivers endpoint id's due deliveries in order under its lease.
func (d *Dispatcher) drain(ctx context.Context, id string) {
	lease := func() bool {
		now := d.Now()
		ok, err := d.Store.LeaseWebhook(ctx, id, d.Owner, now, now.Add(d.Lease))
		if err != nil && ctx.Err() == nil {
			d.Logger.Warn("webhook lease failed", "webhook_id", id, "err", err)
		}
		return ok
	}
	if !lease() {
		return // another replica delivers to it
	}
	defer func() {
		if err := d.Store.ReleaseWebhook(context.WithoutCancel(ctx), id, d.Owner); err != nil {
			d.Logger.Warn("webhook lease release failed", "webhook_id", id, "err", err)
		}
	}()
	for ctx.Err() == nil {
		pend, err := d.Store.PendingWebhookDeliveries(ctx, id, 50)
		if err != nil || len(pend) == 0 {
			return
		}
		w, err := d.Store.GetWebhookUnscoped(ctx, id)
		if err != nil {
			return
		}
		for _, p := range pend {
			if p.NextAttemptAt.After(d.Now()) {
				return // the head waits for its retry: later ones wait behind it
			}
			if !lease() {
				return
			}
			if !d.attempt(ctx, w, p) {
				return
			}
		}
	}
}

// attempt posts one delivery and records the outcome; it reports whether
// the next delivery may follow (this one is no longer pending).
func (d *Dispatcher) attempt(ctx context.Context, w store.Webhook, p store.WebhookDelivery) bool {
	start := d.Now()
	o := store.DeliveryOutcome{AttemptedAt: start, NextAttemptAt: start}
	var (
		status int
		err    error
	)
	disabled := !w.Enabled && p.EventID > 0 // test pings go out regardless
	if !disabled {
		status, err = d.post(ctx, w, p)
		if err != nil && ctx.Err() != nil {
			return false // cut short by a shutdown: not counted, it reruns later
		}
		// A post that got its answer is recorded even while shutting down
		// (below, with a context that outlives ctx): otherwise the next
		// replica would deliver it a second time.
	}
	o.ResponseStatus = status
	switch {
	case disabled:
		o.Status, o.LastError = store.DeliveryFailed, "the endpoint is disabled"
	case err == nil && status >= 200 && status < 300:
		o.Status = store.DeliveryDelivered
	default:
		if err != nil {
			o.LastError = clip(err.Error())
		} else {
			o.LastError = "receiver answered " + strconv.Itoa(status)
		}
		next := start.Add(d.backoff(p.Attempts + 1))
		if next.Sub(p.CreatedAt) > d.RetryWindow {
			o.Status = store.DeliveryFailed
		} else {
			o.Status, o.NextAttemptAt = store.DeliveryPending, next
		}
	}
	ok, ferr := d.Store.FinishWebhookDelivery(context.WithoutCancel(ctx), p.ID, d.Owner, o)
	if ferr != nil {
		d.Logger.Warn("webhook delivery outcome not recorded", "webhook_id", w.ID, "delivery_id", p.ID, "err", ferr)
		return false
	}
	if !ok {
		return false // lease lost meanwhile: the new holder carries on
	}
	if o.Status == store.DeliveryFailed {
		d.Logger.Warn("webhook delivery failed for good", "webhook_id", w.ID, "delivery_id", p.ID, "attempts", p.Attempts+1, "err", o.LastError)
	}
	return o.Status != store.DeliveryPending
}

func (d *Dispatcher) post(ctx context.Context, w store.Webhook, p store.WebhookDelivery) (int, error) {
	secret, err := d.Sealer.Open(w.SecretSealed)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(p.Body))
	if err != nil {
		return 0, err
	}
	eventID := strconv.FormatInt(p.EventID, 10)
	if p.EventID == 0 {
		eventID = "test-" + strconv.FormatInt(p.ID, 10)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Wrenn-Webhooks/1")
	req.Header.Set(SignatureHeader, Sign(secret, d.Now(), p.Body))
	req.Header.Set(EventIDHeader, eventID)
	req.Header.Set(EventTypeHeader, p.EventType)
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}

// backoff is the delay before attempt n+1 after n failed attempts.
func (d *Dispatcher) backoff(n int) time.Duration {
	f := float64(d.BaseBackoff) * math.Pow(2, float64(n-1))
	if f > float64(d.MaxBackoff) || math.IsInf(f, 0) {
		f = float64(d.MaxBackoff)
	}
	f *= 0.8 + 0.4*mrand.Float64() //nolint:gosec // jitter, not a secret
	return time.Duration(f)
}

func clip(s string) string {
	if len(s) > 500 {
		return s[:500] + "…"
	}
	return fmt.Sprint(s)
}
