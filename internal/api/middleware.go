package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
)

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyPrincipal
	keyAdminWS
	keyLogSlot
)

// logSlot lets inner middleware report who made a request to the outer
// request log.
type logSlot struct{ p *principal }

// RequestIDHeader carries the request ID in responses. A client's own
// value is never trusted: every request gets a fresh ID.
const RequestIDHeader = "X-Request-Id"

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

// statusRecorder remembers the status a handler wrote; it keeps Flush and
// Hijack so streaming and WebSocket upgrades still work.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's zero-copy paths behind the recorder (splice
// from a socket for file downloads, sendfile from a file).
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := io.Copy(s.ResponseWriter, r)
	s.bytes += n
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer does not support hijacking")
	}
	if s.status == 0 {
		s.status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// observe assigns the request ID, recovers panics, logs the request and
// records its metrics.
func (a *API) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := auth.RandomToken("req_")[:20]
		w.Header().Set(RequestIDHeader, rid)
		slot := &logSlot{}
		ctx := context.WithValue(r.Context(), keyRequestID, rid)
		r = r.WithContext(context.WithValue(ctx, keyLogSlot, slot))
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as documented
					panic(p)
				}
				a.writeError(rec, r, fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
			}
			route := "unmatched"
			if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
				route = rc.RoutePattern()
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			d := time.Since(start)
			if a.metrics != nil {
				a.metrics.requests.WithLabelValues(r.Method, route, strconv.Itoa(status)).Inc()
				a.metrics.latency.WithLabelValues(r.Method, route).Observe(d.Seconds())
			}
			attrs := []any{
				"request_id", rid, "method", r.Method, "route", route, "status", status,
				"duration_ms", d.Milliseconds(), "bytes", rec.bytes,
			}
			if p := slot.p; p != nil {
				attrs = append(attrs, "team_id", p.TeamID, "user_id", p.UserID, "via", p.Via)
			}
			a.log.InfoContext(r.Context(), "http request", attrs...)
		}()
		next.ServeHTTP(rec, r)
	})
}
