package api_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// BenchmarkListCapsules measures GET /v1/capsules (one page of 100,
// authenticated with an API key) with 10 000 capsules in the team, on
// both stores. Reported: req/s through the API and, as the in-run
// baseline, calls/s of the same store.ListCapsules query made directly;
// api_vs_store is their ratio (the cost of HTTP, auth and JSON).
func BenchmarkListCapsules(b *testing.B) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	for _, o := range apitest.Stores() {
		b.Run(o.Name, func(b *testing.B) {
			st := o.Open(b)
			e := newEnv(b, st)
			u := e.signup("bench@example.com")
			key := e.apiKey(u, "bench")
			ctx := context.Background()
			for i := range n {
				if _, err := st.CreateCapsule(ctx, store.Capsule{
					ID: store.NewID(store.PrefixCapsule), TeamID: u.team, TemplateID: "tpl-base",
					Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 512, DiskSizeMB: 5120, TimeoutSec: 300,
					AccessTokenHash: auth.HashToken(fmt.Sprint(i)),
				}); err != nil {
					b.Fatal(err)
				}
			}
			// Baseline: the store query alone, same page size.
			const baseCalls = 300
			start := time.Now()
			for range baseCalls {
				if _, _, err := st.ListCapsules(ctx, u.team, store.CapsuleFilter{}); err != nil {
					b.Fatal(err)
				}
			}
			storeRate := baseCalls / time.Since(start).Seconds()

			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
			b.ResetTimer()
			for b.Loop() {
				req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/capsules", nil)
				req.Header.Set("X-API-Key", key)
				res, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = res.Body.Read(make([]byte, 1))
				_ = res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
			apiRate := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(apiRate, "req/s")
			b.ReportMetric(storeRate, "store_calls/s")
			b.ReportMetric(apiRate/storeRate, "api_vs_store")
		})
	}
}
