package api_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/webhooks"
)

// withEvents wires the event log, the SSE hub and the webhook service.
func withEvents(t *testing.T, st store.Store, allowPrivate bool) (envOpt, *events.Recorder) {
	hub := &events.Hub{Store: st, Interval: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hub.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	rec := &events.Recorder{Store: st, OnAppend: func(store.Event) { hub.Notify() }}
	sealer, err := webhooks.NewSealer(auth.DeriveKey(testKey, "wrenn webhook secret v1"))
	if err != nil {
		t.Fatal(err)
	}
	svc := &webhooks.Service{Store: st, Sealer: sealer, Guard: &webhooks.Guard{AllowPrivate: allowPrivate}}
	return func(c *api.Config, _ string) {
		c.Events, c.EventHub, c.Webhooks = rec, hub, svc
	}, rec
}

func TestEventLogAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		opt, rec := withEvents(t, st, false)
		e := newEnv(t, st, opt)
		u := e.signup("ev@example.com")
		other := e.signup("other@example.com")
		ctx := t.Context()
		for i := range 5 {
			rec.Emit(ctx, u.team, events.CapsuleCreated, fmt.Sprintf("cl-%d", i%2), map[string]any{"n": i})
		}
		rec.Emit(ctx, u.team, events.CapsuleDestroyed, "cl-0", nil)
		rec.Emit(ctx, other.team, events.CapsuleCreated, "cl-9", nil)

		page := e.want(e.do("GET", "/v1/events?limit=4", u.token, nil), 200).json(t)
		evs := page["events"].([]any)
		if len(evs) != 4 || page["next_cursor"] == "" {
			t.Fatalf("page 1: %v", page)
		}
		page2 := e.want(e.do("GET", "/v1/events?limit=4&cursor="+page["next_cursor"].(string), u.token, nil), 200).json(t)
		if n := len(page2["events"].([]any)); n != 2 {
			t.Fatalf("page 2 has %d events, want 2", n)
		}
		byType := e.want(e.do("GET", "/v1/events?type=capsule.destroyed", u.token, nil), 200).json(t)["events"].([]any)
		if len(byType) != 1 || byType[0].(map[string]any)["subject"] != "cl-0" {
			t.Fatalf("by type: %v", byType)
		}
		bySubj := e.want(e.do("GET", "/v1/events?subject=cl-1", u.token, nil), 200).json(t)["events"].([]any)
		if len(bySubj) != 2 {
			t.Fatalf("by subject: %v", bySubj)
		}
		theirs := e.want(e.do("GET", "/v1/events", other.token, nil), 200).json(t)["events"].([]any)
		if len(theirs) != 1 {
			t.Fatalf("other team sees %d events", len(theirs))
		}
		for _, q := range []string{"type=capsule.nope", "limit=0", "limit=x", "cursor=-1", "cursor=abc"} {
			r := e.want(e.do("GET", "/v1/events?"+q, u.token, nil), 400)
			if r.str(t, "code") != "invalid_argument" {
				t.Errorf("%s: %s", q, r.body)
			}
		}
		e.want(e.do("GET", "/v1/events", "", nil), 401)
	})
}

// sseEvent is one parsed SSE event.
type sseEvent struct{ id, typ, data string }

func readSSE(t *testing.T, sc *bufio.Scanner, n int) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.id != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d events (%v): %v", len(out), out, sc.Err())
	}
	return out
}

func openStream(t *testing.T, e *env, token, query, lastID string) (*bufio.Scanner, func()) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/events/stream"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	return bufio.NewScanner(res.Body), func() { cancel(); res.Body.Close() }
}

// TestEventStreamResume: the SSE stream carries live events, and a client
// that reconnects with Last-Event-ID gets what it missed, then live ones.
func TestEventStreamResume(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		opt, rec := withEvents(t, st, false)
		e := newEnv(t, st, opt)
		u := e.signup("sse@example.com")
		other := e.signup("sse2@example.com")
		ctx := t.Context()
		rec.Emit(ctx, u.team, events.CapsuleCreated, "cl-old", nil) // before the stream: not sent live-only

		sc, stop := openStream(t, e, u.token, "", "")
		time.Sleep(100 * time.Millisecond)
		rec.Emit(ctx, other.team, events.CapsuleCreated, "cl-theirs", nil)
		rec.Emit(ctx, u.team, events.CapsuleRunning, "cl-a", nil)
		rec.Emit(ctx, u.team, events.CapsulePaused, "cl-a", nil)
		got := readSSE(t, sc, 2)
		stop()
		if got[0].typ != events.CapsuleRunning || got[1].typ != events.CapsulePaused || !strings.Contains(got[0].data, `"subject":"cl-a"`) {
			t.Fatalf("live: %+v", got)
		}
		// Missed while disconnected.
		rec.Emit(ctx, u.team, events.CapsuleResumed, "cl-a", nil)
		rec.Emit(ctx, u.team, events.CapsuleDestroyed, "cl-a", nil)
		sc, stop = openStream(t, e, u.token, "", got[1].id)
		defer stop()
		missed := readSSE(t, sc, 2)
		if missed[0].typ != events.CapsuleResumed || missed[1].typ != events.CapsuleDestroyed {
			t.Fatalf("resume: %+v", missed)
		}
		rec.Emit(ctx, u.team, events.CapsuleCreated, "cl-b", nil)
		live := readSSE(t, sc, 1)
		a, _ := strconv.ParseInt(missed[1].id, 10, 64)
		b, _ := strconv.ParseInt(live[0].id, 10, 64)
		if live[0].typ != events.CapsuleCreated || b <= a {
			t.Fatalf("after resume: %+v (ids %d, %d)", live, a, b)
		}
		// A filtered stream.
		sc2, stop2 := openStream(t, e, u.token, "?type=capsule.error", "0")
		defer stop2()
		rec.Emit(ctx, u.team, events.CapsuleCreated, "cl-c", nil)
		rec.Emit(ctx, u.team, events.CapsuleError, "cl-c", map[string]any{"reason": "boom"})
		if f := readSSE(t, sc2, 1); f[0].typ != events.CapsuleError {
			t.Fatalf("filtered: %+v", f)
		}
		e.want(e.do("GET", "/v1/events/stream", u.token, nil, "Last-Event-ID", "nope"), 400)
	})
}

func TestWebhooksAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		opt, _ := withEvents(t, st, false)
		e := newEnv(t, st, opt)
		u := e.signup("wh@example.com")
		other := e.signup("wh2@example.com")

		// Bad input: clear 400s, nothing created.
		for _, body := range []any{
			map[string]any{"url": "http://127.0.0.1:8080/hook"},
			map[string]any{"url": "http://169.254.169.254/latest"},
			map[string]any{"url": "http://10.0.0.5/"},
			map[string]any{"url": "http://localhost/"},
			map[string]any{"url": "http://[::1]/"},
			map[string]any{"url": "file:///etc/passwd"},
			map[string]any{"url": "https://93.184.216.34/h", "event_types": []string{"capsule.nope"}},
			map[string]any{},
			`{"url": 5}`,
		} {
			r := e.do("POST", "/v1/webhooks", u.token, body)
			if r.status != 400 {
				t.Errorf("%v: %d %s", body, r.status, r.body)
			}
		}
		if n := len(e.want(e.do("GET", "/v1/webhooks", u.token, nil), 200).json(t)["webhooks"].([]any)); n != 0 {
			t.Fatalf("refused creates left %d webhooks", n)
		}

		r := e.want(e.do("POST", "/v1/webhooks", u.token, map[string]any{"url": "https://93.184.216.34/h", "event_types": []string{"capsule.created"}}), 201).json(t)
		id, secret := r["id"].(string), r["secret"].(string)
		if !strings.HasPrefix(secret, "whsec_") || r["enabled"] != true {
			t.Fatalf("create: %v", r)
		}
		g := e.want(e.do("GET", "/v1/webhooks/"+id, u.token, nil), 200).json(t)
		if _, has := g["secret"]; has {
			t.Fatal("secret shown again")
		}
		raw, _ := st.GetWebhook(t.Context(), u.team, id)
		if strings.Contains(string(raw.SecretSealed), secret) {
			t.Fatal("secret stored in clear")
		}
		p := e.want(e.do("PATCH", "/v1/webhooks/"+id, u.token, map[string]any{"enabled": false, "event_types": []string{}}), 200).json(t)
		if p["enabled"] != false || len(p["event_types"].([]any)) != 0 || p["url"] != "https://93.184.216.34/h" {
			t.Fatalf("patch: %v", p)
		}
		e.want(e.do("PATCH", "/v1/webhooks/"+id, u.token, map[string]any{"url": "http://192.168.0.1/"}), 400)
		rot := e.want(e.do("POST", "/v1/webhooks/"+id+"/rotate-secret", u.token, nil), 200).json(t)
		if rot["secret"] == secret || !strings.HasPrefix(rot["secret"].(string), "whsec_") {
			t.Fatalf("rotate: %v", rot)
		}
		d := e.want(e.do("POST", "/v1/webhooks/"+id+"/test", u.token, nil), 202).json(t)
		if d["event_type"] != "webhook.test" || d["status"] != "pending" {
			t.Fatalf("test: %v", d)
		}
		ds := e.want(e.do("GET", "/v1/webhooks/"+id+"/deliveries", u.token, nil), 200).json(t)["deliveries"].([]any)
		if len(ds) != 1 {
			t.Fatalf("deliveries: %v", ds)
		}
		// Another team sees nothing of it and changes nothing.
		for _, m := range []struct{ method, path string }{
			{"GET", "/v1/webhooks/" + id},
			{"PATCH", "/v1/webhooks/" + id},
			{"DELETE", "/v1/webhooks/" + id},
			{"POST", "/v1/webhooks/" + id + "/test"},
			{"POST", "/v1/webhooks/" + id + "/rotate-secret"},
			{"GET", "/v1/webhooks/" + id + "/deliveries"},
			{"GET", "/v1/webhooks/wh-nonsense"},
		} {
			var body any
			if m.method == "PATCH" {
				body = map[string]any{"enabled": true}
			}
			e.want(e.do(m.method, m.path, other.token, body), 404)
		}
		e.want(e.do("DELETE", "/v1/webhooks/"+id, u.token, nil), 204)
		e.want(e.do("GET", "/v1/webhooks/"+id, u.token, nil), 404)
	})
}

// TestHostEvents: registering a host and its heartbeat after silence are
// host.up in the platform team's log (a shared host).
func TestHostEvents(t *testing.T) {
	st := apitest.SQLite(t)
	opt, _ := withEvents(t, st, false)
	e := newEnv(t, st, opt)
	admin := e.signup("hostev@example.com")
	e.makeAdmin(admin)
	hostID, _ := e.registerHost(admin, "127.0.0.1:50061", "")
	evs, err := st.ListEvents(t.Context(), store.PlatformTeamID, store.EventFilter{Subject: hostID})
	if err != nil || len(evs) != 1 || evs[0].Type != events.HostUp {
		t.Fatalf("after registration: %+v %v", evs, err)
	}
}

// TestEventStreamAcrossReplicas: two API replicas on one store; an event
// recorded by replica A (which wakes only its own hub) reaches a stream
// served by replica B.
func TestEventStreamAcrossReplicas(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		optA, recA := withEvents(t, st, false)
		optB, _ := withEvents(t, st, false)
		a := newEnv(t, st, optA)
		b := newEnv(t, st, optB)
		u := a.signup("replicas@example.com")
		sc, stop := openStream(t, b, u.token, "", "0")
		defer stop()
		recA.Emit(t.Context(), u.team, events.CapsuleCreated, "cl-from-a", nil)
		got := readSSE(t, sc, 1)
		if !strings.Contains(got[0].data, "cl-from-a") {
			t.Fatalf("replica B streamed %+v", got)
		}
	})
}
