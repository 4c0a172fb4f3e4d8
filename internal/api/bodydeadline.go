package api

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// BodyLimits bound how long a client may take to send a request body, per
// route class. Zero fields take the defaults.
type BodyLimits struct {
	// JSON bounds reading a whole body on every route but uploads
	// (default 10 s): API bodies are small.
	JSON time.Duration
	// UploadGrace is the time an upload (PUT …/files, the port proxy) has
	// before its first bytes must arrive (default 10 s) …
	UploadGrace time.Duration
	// UploadMinRate … after which it must keep up this average rate in
	// bytes per second (default 64 KiB/s): its read deadline moves forward
	// as bytes arrive.
	UploadMinRate int64
}

func (l *BodyLimits) fill() {
	if l.JSON <= 0 {
		l.JSON = 10 * time.Second
	}
	if l.UploadGrace <= 0 {
		l.UploadGrace = 10 * time.Second
	}
	if l.UploadMinRate <= 0 {
		l.UploadMinRate = 64 << 10
	}
}

// BodyDeadlines wraps h so that reading a request body is bounded in time
// (see BodyLimits): a client that declares a body and then sends it slowly
// or not at all loses its connection at the bound instead of holding it.
// It needs the server's own ResponseWriter, so it goes outermost, around
// every handler of an http.Server (controlplane.NewHTTPServer).
func BodyDeadlines(h http.Handler, l BodyLimits) http.Handler {
	l.fill()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || r.Header.Get("Upgrade") != "" {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		start := time.Now()
		b := &deadlineBody{rc: rc, body: r.Body, start: start}
		if isUpload(r) {
			b.grace, b.rate = l.UploadGrace, l.UploadMinRate
			b.deadline = start.Add(l.UploadGrace)
		} else {
			b.deadline = start.Add(l.JSON)
		}
		if err := rc.SetReadDeadline(b.deadline); err != nil {
			h.ServeHTTP(w, r) // not a server connection (tests with a recorder)
			return
		}
		r.Body = b
		// A body the handler left unread keeps its deadline: the server
		// discards the rest after the handler, within the same bound.
		h.ServeHTTP(w, r)
	})
}

// isUpload reports whether r streams data of any size: a file upload or
// anything the port proxy carries to a capsule.
func isUpload(r *http.Request) bool {
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/capsules/") && strings.HasSuffix(r.URL.Path, "/files") {
		return true
	}
	if r.Method == http.MethodPost && r.URL.Path == "/v1/templates/builds" { // a build context or image
		return true
	}
	return !strings.HasPrefix(r.URL.Path, "/v1/") || strings.HasPrefix(r.URL.Path, "/proxy/")
}

// deadlineBody moves an upload's read deadline forward as bytes arrive
// and lifts it once the body is read, so the server's background read
// (which cancels the request's context on error) never hits it.
type deadlineBody struct {
	rc    *http.ResponseController
	body  io.ReadCloser
	start time.Time
	grace time.Duration
	rate  int64 // bytes per second; 0 = fixed deadline

	mu       sync.Mutex
	n        int64
	deadline time.Time
	done     bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.mu.Lock()
	b.n += int64(n)
	if err == nil && b.rate > 0 && !b.done {
		d := b.start.Add(b.grace + time.Duration(float64(b.n)/float64(b.rate)*float64(time.Second)))
		if d.After(b.deadline) {
			b.deadline = d
			_ = b.rc.SetReadDeadline(d)
		}
	}
	b.mu.Unlock()
	if err != nil {
		if isTimeout(err) {
			// Keep the expired deadline: the connection is done for.
			b.mu.Lock()
			b.done = true
			b.mu.Unlock()
			return n, errBodyTimeout
		}
		b.clear()
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.body.Close() }

func (b *deadlineBody) clear() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

// errBodyTimeout is what a handler reading a body past its bound gets.
var errBodyTimeout = errorf(CodeRequestTimeout, "the request body was not received in time")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
