package relay_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/relay"
)

// slowConn returns from each Write some time after the bytes went out,
// as a write loop descheduled on a busy host does.
type slowConn struct{ net.Conn }

func (c slowConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	time.Sleep(30 * time.Millisecond)
	return n, err
}

// hop is one reverse proxy to target, as the E2B envd route's hops are,
// whose writes to target return late.
func hop(t *testing.T, target string) *httptest.Server {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return slowConn{c}, nil
		}},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	s := httptest.NewServer(relay.FullDuplex(rp, nil))
	t.Cleanup(s.Close)
	return s
}

// TestStreamSurvivesBodyAfterResponseStarts: through two proxy hops, an
// upstream that starts a streamed answer before it has read the whole
// request body (as a stream does), and reads the rest afterwards, gets
// every byte and its answer arrives whole. Before the hops were full
// duplex, the first hop's server drained and closed the request body when
// the answer's headers went out, its Transport failed reading that body
// ("invalid Read on closed Body" or a short body) and closed the upstream
// connection mid-answer: the E2B envd route's intermittent "terminated"
// (issue 14), here made deterministic by sending the body's tail late.
func TestStreamSurvivesBodyAfterResponseStarts(t *testing.T) {
	const head, tail = "first", "-and-the-rest"
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, len(head))
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "application/connect+json")
		fmt.Fprintf(w, "started after %q\n", buf)
		w.(http.Flusher).Flush()
		rest, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "rest %q err %v\n", rest, err)
	}))
	t.Cleanup(upstream.Close)
	front := hop(t, hop(t, upstream.URL).URL)

	for i := range 5 {
		pr, pw := io.Pipe()
		go func() {
			_, _ = io.WriteString(pw, head)
			time.Sleep(200 * time.Millisecond)
			_, _ = io.WriteString(pw, tail)
			_ = pw.Close()
		}()
		req, err := http.NewRequest(http.MethodPost, front.URL+"/process.Process/Start", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(head) + len(tail))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		want := fmt.Sprintf("started after %q\nrest %q err <nil>\n", head, tail)
		if err != nil || string(got) != want {
			t.Fatalf("round %d: got %q (read error %v), want %q", i, got, err, want)
		}
	}
}

// TestManyShortStreams: many small requests with streamed answers, side
// by side through two hops, all arrive whole (the shape of the E2B SDK's
// commands: a small body, then the process's output as a stream).
func TestManyShortStreams(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/connect+json")
		for i := range 3 {
			fmt.Fprintf(w, "%s line%d\n", b, i)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(upstream.Close)
	front := hop(t, hop(t, upstream.URL).URL)
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 10 {
				body := fmt.Sprintf("g%d-%d", g, i)
				resp, err := http.Post(front.URL+"/s", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				want := fmt.Sprintf("%s line0\n%s line1\n%s line2\n", body, body, body)
				if err != nil || string(got) != want {
					errs <- fmt.Errorf("%s: got %q (%w), want %q", body, got, err, want)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
