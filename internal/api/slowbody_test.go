package api_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// slowRequest sends method path declaring a body of declared bytes and then
// sends only sent of them; it returns the connection (still open).
func slowRequest(t *testing.T, addr, method, path string, declared, sent int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		method, path, declared, strings.Repeat("{", sent))
	return c
}

// cutWithin waits for the server to close c (after an answer or not) and
// fails unless it does within bound; it returns the status line ("" if
// closed silently).
func cutWithin(t *testing.T, c net.Conn, bound time.Duration) string {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(bound + 5*time.Second))
	br := bufio.NewReader(c)
	line, _ := br.ReadString('\n')
	_, err := io.Copy(io.Discard, br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() { //nolint:errorlint // direct net error
		t.Fatalf("the server still holds a request whose body never came after %v (bound %v)", time.Since(start), bound)
	}
	if d := time.Since(start); d > bound+2*time.Second {
		t.Fatalf("cut after %v, bound %v", d, bound)
	}
	return strings.TrimSpace(line)
}

// TestSlowBodyIsCut: a POST that declares 100 bytes and sends 1 is cut
// within the JSON bound, also on an unauthenticated route (login); an
// upload that stalls is cut after its grace, one that keeps the minimum
// rate is not.
func TestSlowBodyIsCut(t *testing.T) {
	st := apitest.Stores()[0].Open(t)
	limits := api.BodyLimits{JSON: 500 * time.Millisecond, UploadGrace: 500 * time.Millisecond, UploadMinRate: 1000}
	e := newEnv(t, st)
	srv := httptest.NewServer(api.BodyDeadlines(e.srv.Config.Handler, limits))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	// /v1/capsules answers 401 at once without reading the body; the rest
	// of the body is then discarded within the same bound.
	for _, path := range []string{"/v1/auth/login", "/v1/auth/signup", "/v1/capsules"} {
		c := slowRequest(t, addr, "POST", path, 100, 1)
		line := cutWithin(t, c, limits.JSON)
		if path != "/v1/capsules" && line != "" && !strings.Contains(line, " 408 ") {
			t.Errorf("%s: %q, want 408 or a closed connection", path, line)
		}
	}
	// An upload that stalls after its first byte.
	c := slowRequest(t, addr, "PUT", "/v1/capsules/cl-x/files?path=/tmp/x", 1<<20, 1)
	cutWithin(t, c, limits.UploadGrace)

	// An upload at twice the minimum rate for 3× the grace is read whole.
	got := make(chan int64, 1)
	up := httptest.NewServer(api.BodyDeadlines(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			n = -1
		}
		got <- n
	}), limits))
	defer up.Close()
	pr, pw := io.Pipe()
	go func() {
		defer pw.Close()
		for range 15 { // 15 × 200 B every 100 ms = 2000 B/s for 1.5 s
			if _, err := pw.Write(make([]byte, 200)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	req, _ := http.NewRequest("PUT", up.URL+"/v1/capsules/cl-x/files", pr)
	req.ContentLength = 3000
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if n := <-got; n != 3000 {
		t.Errorf("an upload keeping the minimum rate: read %d bytes, want 3000", n)
	}
}

// TestUnauthenticatedInFlightPerIP: one client address may hold at most
// MaxUnauthInFlightPerIP requests on the unauthenticated routes; the next
// gets 429 rate_limited with the usual error body.
func TestUnauthenticatedInFlightPerIP(t *testing.T) {
	st := apitest.Stores()[0].Open(t)
	e := newEnv(t, st, func(c *api.Config, _ string) { c.MaxUnauthInFlightPerIP = 2 })
	addr := e.srv.Listener.Addr().String()
	held := []net.Conn{slowRequest(t, addr, "POST", "/v1/auth/login", 100, 1), slowRequest(t, addr, "POST", "/v1/auth/login", 100, 1)}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := e.do("POST", "/v1/auth/login", "", map[string]string{"email": "a@example.com", "password": "x"})
		if r.status == http.StatusTooManyRequests {
			if code := r.str(t, "code"); code != "rate_limited" {
				t.Fatalf("code %q", code)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a third concurrent unauthenticated request got %d, want 429", r.status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range held {
		_ = c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if r := e.do("POST", "/v1/auth/login", "", map[string]string{"email": "a@example.com", "password": "x"}); r.status != http.StatusTooManyRequests {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slots were not released when the slow requests ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
