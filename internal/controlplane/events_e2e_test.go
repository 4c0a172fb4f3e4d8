package controlplane_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/webhooks"
)

// startCPStoppable is startCP with a stop function (a control plane
// restart mid-test): stop ends Serve and closes the server.
func startCPStoppable(t *testing.T, st store.Store, tweak func(*controlplane.Config)) (*cp, func()) {
	t.Helper()
	cfg := controlplane.Config{Store: st, Secret: testSecret, Logger: logger(), ReconcileInterval: time.Hour}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := controlplane.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln, nil); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait(); srv.Close() }) }
	t.Cleanup(stop)
	hc := &http.Client{Transport: apitest.NewValidator(t).RoundTripper(t, nil)}
	return &cp{t: t, srv: srv, url: "http://" + ln.Addr().String(), st: st, hc: hc}, stop
}

// hookReceiver records verified deliveries.
type hookReceiver struct {
	secret atomic.Pointer[string]
	down   atomic.Bool
	mu     sync.Mutex
	seen   map[string]bool
	got    []string // "type subject", first delivery of each event id
	bad    int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.down.Load() {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.secret.Load(); s == nil || webhooks.Verify(*s, r.Header.Get(webhooks.SignatureHeader), body, time.Now(), 0) != nil {
		h.bad++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	id := r.Header.Get(webhooks.EventIDHeader)
	if !h.seen[id] {
		h.seen[id] = true
		var e struct{ Type, Subject string }
		_ = json.Unmarshal(body, &e)
		h.got = append(h.got, e.Type+" "+e.Subject)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) events() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.got...)
}

// TestWebhooksEndToEnd: a receiver gets every event of a scripted capsule
// life cycle in order with valid signatures, although it was down for a
// while and the control plane restarted mid-way (the outbox is in the
// store); a receiver with the wrong secret detects it.
func TestWebhooksEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	fast := func(c *controlplane.Config) {
		c.WebhookAllowPrivate = true
		c.WebhookPollInterval, c.WebhookBaseBackoff, c.WebhookMaxBackoff = 50*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond
		c.WebhookLease = 2 * time.Second
		c.EventPollInterval = 50 * time.Millisecond
	}
	c, stop := startCPStoppable(t, st, fast)
	ctx := testutil.Context(t, testutil.Long)
	adminTok, adminID, _ := c.signup("hooks-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	startAgentOn(t, c, adminTok, netip.MustParsePrefix("10.90.0.0/16"))
	userTok, _, _ := c.signup("hooks-user@example.com")

	rcv := &hookReceiver{seen: map[string]bool{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	// A URL on loopback is refused without --webhook-allow-private.
	strict, stopStrict := startCPStoppable(t, st, nil)
	strict.call("POST", "/v1/webhooks", userTok, map[string]any{"url": srv.URL}, 400)
	stopStrict()

	hook := c.call("POST", "/v1/webhooks", userTok, map[string]any{"url": srv.URL, "event_types": []string{
		"capsule.created", "capsule.running", "capsule.paused", "capsule.resumed", "capsule.destroyed",
	}}, 201).obj(t)
	secret := hook["secret"].(string)
	rcv.secret.Store(&secret)

	id := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)["id"].(string)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(rcv.events()) >= 2 }, "create events delivered")

	// The receiver goes down; the pause's event waits in the outbox while
	// the control plane restarts.
	rcv.down.Store(true)
	c.call("POST", "/v1/capsules/"+id+"/pause", userTok, nil, 200)
	time.Sleep(500 * time.Millisecond) // a few failed attempts
	stop()
	c, _ = startCPStoppable(t, st, fast)
	c.call("POST", "/v1/capsules/"+id+"/resume", userTok, map[string]any{}, 200)
	time.Sleep(300 * time.Millisecond)
	rcv.down.Store(false)
	c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)

	want := []string{
		"capsule.created " + id, "capsule.running " + id, "capsule.paused " + id,
		"capsule.resumed " + id, "capsule.destroyed " + id,
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return len(rcv.events()) >= len(want) }, "every event delivered")
	if got := rcv.events(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("receiver got\n%v\nwant\n%v", got, want)
	}
	if rcv.bad != 0 {
		t.Fatalf("%d deliveries failed verification", rcv.bad)
	}
	// The log says the same; the deliveries show the retries.
	evs := c.call("GET", "/v1/events?subject="+id, userTok, nil, 200).obj(t)["events"].([]any)
	if len(evs) != len(want) {
		t.Fatalf("log has %d events for the capsule: %v", len(evs), evs)
	}
	// A delivery is recorded as delivered after the receiver's answer:
	// the last one may still be on its way when the receiver has it.
	var ds []any
	testutil.Eventually(t, 30*time.Second, func() bool {
		ds = c.call("GET", "/v1/webhooks/"+hook["id"].(string)+"/deliveries", userTok, nil, 200).obj(t)["deliveries"].([]any)
		for _, d := range ds {
			if d.(map[string]any)["status"] != "delivered" {
				return false
			}
		}
		return true
	}, "every delivery recorded as delivered")
	retried := false
	for _, d := range ds {
		m := d.(map[string]any)
		if m["status"] != "delivered" {
			t.Errorf("delivery not delivered: %v", m)
		}
		if m["attempts"].(float64) > 1 {
			retried = true
		}
	}
	if !retried {
		t.Error("no delivery was retried, though the receiver was down")
	}

	// The SSE stream through the whole control plane handler (middleware,
	// body deadlines, dashboard mux) replays the log from Last-Event-ID.
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, "GET", c.url+"/v1/events/stream?subject="+id, nil)
	req.Header.Set("Authorization", "Bearer "+userTok)
	req.Header.Set("Last-Event-ID", "0")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(res.Body)
	var streamed []string
	for len(streamed) < len(want) && sc.Scan() {
		if typ, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			streamed = append(streamed, typ+" "+id)
		}
	}
	_ = res.Body.Close()
	if fmt.Sprint(streamed) != fmt.Sprint(want) {
		t.Fatalf("SSE replay %v, want %v", streamed, want)
	}

	// A rotated secret the receiver does not know: it detects the mismatch.
	c.call("POST", "/v1/webhooks/"+hook["id"].(string)+"/rotate-secret", userTok, nil, 200)
	c.call("POST", "/v1/webhooks/"+hook["id"].(string)+"/test", userTok, nil, 202)
	testutil.Eventually(t, 10*time.Second, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return rcv.bad > 0
	}, "wrong secret detected")
}
