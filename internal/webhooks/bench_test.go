package webhooks

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// BenchmarkWebhookDelivery measures event → receiver latency through the
// outbox (Recorder.Emit stores the event and its delivery row in one
// transaction, the dispatcher is woken, leases the endpoint, signs and
// posts), on SQLite, one event at a time. Baseline in the same run: the
// same signed POST sent directly to the same receiver. Reports p50/p99 of
// both (ms).
func BenchmarkWebhookDelivery(b *testing.B) {
	st := teststore.Open(b, teststore.SQLite)
	ctx := context.Background()
	team, _ := st.CreateTeam(ctx, store.Team{Name: "bench"})
	sealer, _ := NewSealer(auth.DeriveKey([]byte("0123456789abcdef0123456789abcdef"), "wrenn webhook secret v1"))
	arrived := make(chan time.Time, 1)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
		arrived <- time.Now()
	}))
	defer rcv.Close()
	svc := &Service{Store: st, Sealer: sealer, Guard: &Guard{AllowPrivate: true}}
	if _, _, err := svc.Create(ctx, team.ID, Spec{URL: &rcv.URL}); err != nil {
		b.Fatal(err)
	}
	d := &Dispatcher{Store: st, Sealer: sealer, Guard: &Guard{AllowPrivate: true}, Interval: time.Second}
	dctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(dctx) })
	defer func() { cancel(); wg.Wait() }()
	rec := &events.Recorder{Store: st, OnAppend: func(store.Event) { d.Notify() }}

	var via, direct []float64
	body := []byte(`{"id":"1","type":"capsule.created"}`)
	hc := &http.Client{}
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		rec.Emit(ctx, team.ID, events.CapsuleCreated, "cl-"+strconv.Itoa(i), nil)
		at := <-arrived
		via = append(via, float64(at.Sub(start).Microseconds())/1000)

		start = time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, rcv.URL, bytes.NewReader(body))
		req.Header.Set(SignatureHeader, Sign("whsec_x", start, body))
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_ = resp.Body.Close()
		at = <-arrived
		direct = append(direct, float64(at.Sub(start).Microseconds())/1000)
	}
	b.StopTimer()
	b.ReportMetric(pct(via, 50), "p50-ms")
	b.ReportMetric(pct(via, 99), "p99-ms")
	b.ReportMetric(pct(direct, 50), "direct-p50-ms")
	b.ReportMetric(pct(direct, 99), "direct-p99-ms")
}

func pct(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}
