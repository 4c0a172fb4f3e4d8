package network_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// records is a slog handler that keeps the "policy denied" records.
type records struct {
	mu  sync.Mutex
	got []map[string]any
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "network: policy denied" {
		return nil
	}
	m := map[string]any{}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	return nil
}

func (r *records) snapshot() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

// TestDenialLogging (issue 13 item 7): a dropped connection is logged with
// the capsule's id, its destination (address, port, protocol) and the rule
// that dropped it; a burst of drops gives one line a second per capsule,
// the rest counted as suppressed; refused names are logged the same way.
func TestDenialLogging(t *testing.T) {
	rec := &records{}
	m := newManagerLog(t, slog.New(rec))
	nettest.Start(t)
	a := setup(t, m, "dlog", true, &runtime.NetworkPolicy{DenyOut: []string{nettest.Web1.String(), "allowed." + nettest.Zone}})
	m.Label(a.Key, "cl-denylog")
	if reach(t, a, web(nettest.Web1)) {
		t.Fatal("denied address reachable")
	}
	want := map[string]any{"capsule_id": "cl-denylog", "capsule_key": a.Key, "destination": web(nettest.Web1) + "/tcp", "rule": "deny_out", "kind": "packet"}
	deadline := time.Now().Add(5 * time.Second)
	for !logged(rec.snapshot(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no denial logged like %v; got %v", want, rec.snapshot())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Always-blocked destinations are logged too.
	reach(t, a, "169.254.169.254:80")
	// A burst: at most one line a second, the rest suppressed.
	time.Sleep(1100 * time.Millisecond)
	before := len(rec.snapshot())
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); reach(t, a, web(nettest.Web1)) }()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	if n := len(rec.snapshot()) - before; n > 2 {
		t.Errorf("%d lines for a burst of 20 drops in under a second, want at most 2", n)
	}
	time.Sleep(1100 * time.Millisecond)
	reach(t, a, web(nettest.Web1))
	deadline = time.Now().Add(3 * time.Second)
	for {
		got := rec.snapshot()
		if last := got[len(got)-1]; last["suppressed"].(int64) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no suppressed count after a burst: %v", got[before:])
		}
		time.Sleep(50 * time.Millisecond)
	}
	found := false
	for _, r := range rec.snapshot() {
		if r["destination"] == "169.254.169.254:80/tcp" && r["rule"] == "always-blocked" {
			found = true
		}
	}
	if !found {
		// The metadata drop may have been folded into a suppressed count:
		// try once more on its own second.
		time.Sleep(1100 * time.Millisecond)
		reach(t, a, "169.254.169.254:80")
		time.Sleep(500 * time.Millisecond)
		if !logged(rec.snapshot(), map[string]any{"destination": "169.254.169.254:80/tcp", "rule": "always-blocked"}) {
			t.Errorf("the metadata address drop was not logged: %v", rec.snapshot())
		}
	}
	// Refused names.
	time.Sleep(1100 * time.Millisecond)
	if r, err := resolve(t, a, network.InsideGateway, "udp", "allowed."+nettest.Zone); err != nil || r.Rcode == 0 {
		t.Fatalf("denied name answered: %v %v", r, err)
	}
	if !logged(rec.snapshot(), map[string]any{"capsule_id": "cl-denylog", "destination": "allowed.wrenn-test.example", "kind": "dns"}) {
		t.Errorf("refused name not logged: %v", rec.snapshot())
	}
}

func logged(got []map[string]any, want map[string]any) bool {
	for _, g := range got {
		ok := true
		for k, v := range want {
			if g[k] != v {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}
