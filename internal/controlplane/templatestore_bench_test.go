package controlplane_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkCreateFromMemoryTemplate measures, through the API and the port
// proxy, "create a capsule from a template whose web server was running
// when it was snapshotted → the server answers on port 8000", against the
// same run's baseline "create a plain capsule → its first exec answers".
// Each iteration does one of each (interleaved, so both see the same
// machine load); the p50s and their ratio are reported. The server is
// busybox httpd (the minimal template has no python3). Needs CRIU
// (WRENN_TEST_CRIU): without it the template keeps files only and the
// benchmark fails rather than measure a boot.
func BenchmarkCreateFromMemoryTemplate(b *testing.B) {
	testutil.RequireRoot(b)
	if os.Getenv("WRENN_TEST_CRIU") == "" {
		b.Fatal("WRENN_TEST_CRIU is not set: export WRENN_TEST_CRIU=$(scripts/criu.sh)")
	}
	st := apitest.SQLite(b)
	c := startCP(b, st, nil)
	ctx := context.Background()
	adminTok, adminID, _ := c.signup("bench-tmpl-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		b.Fatal(err)
	}
	shared, err := store.OpenLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ag := startSharedAgent(b, c, adminTok, 137, 16384, shared)
	userTok, _, _ := c.signup("bench-tmpl-user@example.com")
	res := map[string]any{"memory_mb": 128, "disk_size_mb": 512}
	body := func(tmpl string) map[string]any {
		m := map[string]any{"template": tmpl}
		for k, v := range res {
			m[k] = v
		}
		return m
	}

	src := c.call("POST", "/v1/capsules", userTok, body("minimal"), 201).obj(b)
	srcID := src["id"].(string)
	c.call("PUT", "/v1/capsules/"+srcID+"/files?path=/srv/index.html", userTok, []byte("hi"), 200)
	c.call("POST", "/v1/capsules/"+srcID+"/processes", userTok, map[string]any{"cmd": "httpd", "args": []string{"-f", "-p", "8000", "-h", "/srv"}}, 201)
	time.Sleep(200 * time.Millisecond)
	snap := c.call("POST", "/v1/capsules/"+srcID+"/snapshot", userTok, map[string]any{"name": "bench-web"}, 201).obj(b)
	if snap["memory"] != true {
		b.Fatalf("the template kept no memory: %v", snap)
	}
	c.call("DELETE", "/v1/capsules/"+srcID, userTok, nil, 204)

	plainRound := func() time.Duration {
		t0 := time.Now()
		id := c.call("POST", "/v1/capsules", userTok, body("minimal"), 201).obj(b)["id"].(string)
		c.call("POST", "/v1/capsules/"+id+"/exec", userTok, map[string]any{"cmd": "true"}, 200)
		d := time.Since(t0)
		c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
		return d
	}
	memRound := func() time.Duration {
		t0 := time.Now()
		capsule := c.call("POST", "/v1/capsules", userTok, body("bench-web"), 201).obj(b)
		id, tok := capsule["id"].(string), capsule["access_token"].(string)
		for {
			r := c.callProxy("GET", "/proxy/"+id+"/8000/index.html?wrenn_access_token="+tok, "", 0)
			if r.status == 200 && string(r.body) == "hi" {
				break
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("port 8000 of a capsule from the memory template never answered: %d %s", r.status, r.body)
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := time.Since(t0)
		c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
		return d
	}
	// Cold: no warm pools.
	var plain, fromMem, plainPool, memPool []time.Duration
	for b.Loop() {
		plain = append(plain, plainRound())
		fromMem = append(fromMem, memRound())
	}
	// Warm pools of both templates (the memory template's pool holds
	// capsules restored from its memory image, frozen): refilled before
	// every round.
	tid := snap["id"].(string)
	ag.drv.SetWarmPool("minimal", 1)
	ag.drv.SetWarmPool(tid, 1)
	ready := func() {
		deadline := time.Now().Add(time.Minute)
		for ag.drv.WarmPoolSize("minimal") < 1 || ag.drv.WarmPoolSize(tid) < 1 {
			if time.Now().After(deadline) {
				b.Fatal("warm pools did not fill")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for range len(plain) {
		ready()
		plainPool = append(plainPool, plainRound())
		ready()
		memPool = append(memPool, memRound())
	}
	p50 := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2].Microseconds()) / 1000
	}
	b.ReportMetric(p50(fromMem), "cold_p50_ms_memtemplate_to_port")
	b.ReportMetric(p50(plain), "cold_p50_ms_plain_to_first_exec")
	b.ReportMetric(p50(fromMem)/p50(plain), "cold_ratio")
	b.ReportMetric(p50(memPool), "pool_p50_ms_memtemplate_to_port")
	b.ReportMetric(p50(plainPool), "pool_p50_ms_plain_to_first_exec")
	b.ReportMetric(p50(memPool)/p50(plainPool), "pool_ratio")
	b.ReportMetric(p50(memPool)/p50(plain), "pool_mem_vs_cold_plain")
}
