package webhooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

func TestSignVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"id":"1"}`)
	h := Sign("s3cret", now, body)
	if err := Verify("s3cret", h, body, now.Add(time.Minute), 0); err != nil {
		t.Fatalf("good signature: %v", err)
	}
	for _, tc := range []struct {
		name, secret, header string
		body                 []byte
		now                  time.Time
		want                 error
	}{
		{"wrong secret", "other", h, body, now, ErrMismatch},
		{"changed body", "s3cret", h, []byte(`{"id":"2"}`), now, ErrMismatch},
		{"too old", "s3cret", h, body, now.Add(10 * time.Minute), ErrTooOld},
		{"garbage", "s3cret", "nonsense", body, now, ErrBadHeader},
		{"no v1", "s3cret", "t=1700000000", body, now, ErrBadHeader},
		{"bad hex", "s3cret", "t=1700000000,v1=zz", body, now, ErrBadHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Verify(tc.secret, tc.header, tc.body, tc.now, 0); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A rotation sends two v1 values; either matches.
	two := h + ",v1=" + Sign("new", now, body)[len("t=1700000000,v1="):]
	if err := Verify("new", two, body, now, 0); err != nil {
		t.Fatalf("second v1: %v", err)
	}
}

func TestSeal(t *testing.T) {
	s, err := NewSealer(auth.DeriveKey([]byte("0123456789abcdef0123456789abcdef"), "wrenn webhook secret v1"))
	if err != nil {
		t.Fatal(err)
	}
	sec := NewSecret()
	sealed := s.Seal(sec)
	if string(sealed) == sec || len(sealed) < len(sec) {
		t.Fatal("not sealed")
	}
	got, err := s.Open(sealed)
	if err != nil || got != sec {
		t.Fatalf("open: %q %v", got, err)
	}
	other, _ := NewSealer(auth.DeriveKey([]byte("another secret another secret 12"), "wrenn webhook secret v1"))
	if _, err := other.Open(sealed); err == nil {
		t.Fatal("opened with another server secret")
	}
}

func TestGuard(t *testing.T) {
	g := &Guard{LocalAddrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("203.0.113.7")} }}
	ctx := testutil.Context(t, testutil.Short)
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"https://93.184.216.34/hook", true},
		{"http://[2606:4700::1111]/x", true},
		{"http://127.0.0.1:8080/", false},
		{"http://localhost/", false},
		{"http://foo.localhost/", false},
		{"http://10.1.2.3/", false},
		{"http://172.16.0.1/", false},
		{"http://192.168.1.1/", false},
		{"http://169.254.169.254/latest/meta-data", false},
		{"http://100.64.0.1/", false},
		{"http://0.0.0.0/", false},
		{"http://[::1]/", false},
		{"http://[fe80::1]/", false},
		{"http://[fd00::1]/", false},
		{"http://[::ffff:127.0.0.1]/", false},
		{"http://[64:ff9b::a00:1]/", false},
		{"http://203.0.113.7/", false}, // the host itself
		{"ftp://93.184.216.34/", false},
		{"http://user:pw@93.184.216.34/", false},
		{"/relative", false},
		{"", false},
	} {
		err := g.CheckURL(ctx, tc.url)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
	if err := (&Guard{AllowPrivate: true}).CheckURL(ctx, "http://127.0.0.1:1/"); err != nil {
		t.Errorf("allow private: %v", err)
	}
	// The dial-time check refuses what a name resolved to (DNS rebinding).
	if err := g.Control("tcp4", "127.0.0.1:80", nil); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("dial check: %v", err)
	}
}

// receiver is a test webhook endpoint that verifies every delivery.
type receiver struct {
	t      *testing.T
	secret atomic.Pointer[string]
	down   atomic.Bool
	mu     sync.Mutex
	ids    []string
	bad    int
	srv    *httptest.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := Verify(*r.secret.Load(), req.Header.Get(SignatureHeader), body, time.Now(), 0); err != nil {
			r.bad++
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		r.ids = append(r.ids, req.Header.Get(EventIDHeader))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}

func newDispatcher(st store.Store, sealer *Sealer, owner string) *Dispatcher {
	return &Dispatcher{
		Store: st, Sealer: sealer, Guard: &Guard{AllowPrivate: true}, Owner: owner,
		Interval: 20 * time.Millisecond, BaseBackoff: 30 * time.Millisecond, MaxBackoff: 150 * time.Millisecond,
		Lease: time.Second, Timeout: 2 * time.Second,
	}
}

// TestDeliveryLifecycle: every event reaches the receiver once, in order,
// signed; through a receiver outage, a dispatcher restart mid-way (the old
// one vanished holding the lease) and two replicas delivering at once.
func TestDeliveryLifecycle(t *testing.T) {
	for _, eng := range teststore.Engines {
		t.Run(eng, func(t *testing.T) {
			st := teststore.Open(t, eng)
			ctx := testutil.Context(t, testutil.Long)
			team, err := st.CreateTeam(ctx, store.Team{Name: "hooks"})
			if err != nil {
				t.Fatal(err)
			}
			sealer, _ := NewSealer(auth.DeriveKey([]byte("0123456789abcdef0123456789abcdef"), "wrenn webhook secret v1"))
			svc := &Service{Store: st, Sealer: sealer, Guard: &Guard{AllowPrivate: true}}
			rcv := newReceiver(t)
			w, secret, err := svc.Create(ctx, team.ID, Spec{URL: &rcv.srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			rcv.secret.Store(&secret)
			rec := &events.Recorder{Store: st}
			var want []string
			emit := func(n int) {
				for range n {
					rec.Emit(ctx, team.ID, events.CapsuleCreated, "cl-x", nil)
				}
				evs, err := st.ListEvents(ctx, team.ID, store.EventFilter{Limit: 1000})
				if err != nil {
					t.Fatal(err)
				}
				want = want[:0]
				for _, e := range evs {
					want = append(want, strconv.FormatInt(e.ID, 10))
				}
			}
			waitAll := func(what string) {
				testutil.Eventually(t, 20*time.Second, func() bool { return len(rcv.got()) >= len(want) }, what)
				if got := rcv.got(); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("%s: receiver got %v, want %v in order, once each", what, got, want)
				}
			}

			// 1. Normal delivery, with the receiver down for a while.
			rcv.down.Store(true)
			d1ctx, stop1 := context.WithCancel(ctx)
			d1 := newDispatcher(st, sealer, "replica-1")
			done1 := make(chan struct{})
			go func() { d1.Run(d1ctx); close(done1) }()
			emit(5)
			time.Sleep(300 * time.Millisecond) // several failed attempts
			if n := len(rcv.got()); n != 0 {
				t.Fatalf("receiver down but got %d", n)
			}
			rcv.down.Store(false)
			waitAll("after the outage")

			// 2. The replica dies holding the lease (simulated: a lease
			// taken under its name, then it stops); a new one takes over
			// once the lease expires.
			stop1()
			<-done1
			now := time.Now()
			if ok, err := st.LeaseWebhook(ctx, w.ID, "replica-1", now, now.Add(time.Second)); err != nil || !ok {
				t.Fatalf("lease: %v %v", ok, err)
			}
			emit(3)
			d2ctx, stop2 := context.WithCancel(ctx)
			defer stop2()
			d3ctx, stop3 := context.WithCancel(ctx)
			defer stop3()
			var wg sync.WaitGroup
			wg.Go(func() { newDispatcher(st, sealer, "replica-2").Run(d2ctx) })
			wg.Go(func() { newDispatcher(st, sealer, "replica-3").Run(d3ctx) })
			waitAll("after the restart")

			// 3. Both replicas running: a burst is still delivered once each, in order.
			emit(20)
			waitAll("two replicas")

			// 4. A rotated secret: the receiver still on the old one detects it.
			if _, err := svc.Rotate(ctx, team.ID, w.ID); err != nil {
				t.Fatal(err)
			}
			rec.Emit(ctx, team.ID, events.CapsuleDestroyed, "cl-x", nil)
			testutil.Eventually(t, 10*time.Second, func() bool {
				rcv.mu.Lock()
				defer rcv.mu.Unlock()
				return rcv.bad > 0
			}, "wrong secret detected")
			stop2()
			stop3()
			wg.Wait()

			hist, err := svc.Deliveries(ctx, team.ID, w.ID, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			var retried bool
			for _, h := range hist {
				if h.Attempts > 1 && h.Status == store.DeliveryDelivered {
					retried = true
				}
			}
			if !retried {
				t.Error("no delivery shows retries after the outage")
			}
		})
	}
}

func TestServiceBadInput(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Long)
	team, _ := st.CreateTeam(ctx, store.Team{Name: "a"})
	other, _ := st.CreateTeam(ctx, store.Team{Name: "b"})
	sealer, _ := NewSealer(make([]byte, 32))
	svc := &Service{Store: st, Sealer: sealer, Guard: &Guard{}}
	for _, u := range []string{"http://127.0.0.1/", "http://169.254.169.254/", "gopher://x", "http://10.0.0.1/"} {
		if _, _, err := svc.Create(ctx, team.ID, Spec{URL: &u}); !isInvalid(err) {
			t.Errorf("%q: %v, want invalid", u, err)
		}
	}
	ok := "https://93.184.216.34/h"
	bad := []string{"capsule.nope"}
	if _, _, err := svc.Create(ctx, team.ID, Spec{URL: &ok, EventTypes: &bad}); !isInvalid(err) {
		t.Errorf("bad type: %v", err)
	}
	w, sec, err := svc.Create(ctx, team.ID, Spec{URL: &ok})
	if err != nil || sec == "" {
		t.Fatal(err)
	}
	if _, err := svc.Get(ctx, other.ID, w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("other team's webhook: %v", err)
	}
	if err := svc.Delete(ctx, other.ID, w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete other team's webhook: %v", err)
	}
	priv := "http://10.0.0.1/"
	if _, err := svc.Update(ctx, team.ID, w.ID, Spec{URL: &priv}); !isInvalid(err) {
		t.Errorf("update to private: %v", err)
	}
	if got, _ := svc.Get(ctx, team.ID, w.ID); got.URL != ok {
		t.Errorf("refused update changed the URL to %q", got.URL)
	}
}

func isInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}
