package process

import (
	"context"
	"net/http"

	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// batchWriter lets an event stream put several events in one flush. connect
// flushes the response after every message it sends; while a stream holds
// its batchWriter those flushes are only noted, and the stream flushes
// itself before it waits for the next event. So events that are ready
// together (output and the end event of a process that just ended, a
// replayed backlog, the end event and the end of the stream) leave in one
// write, and an event is never held back while the stream waits: the
// stream semantics are those of a flush per event.
//
// Only the handler's goroutine uses it (connect sends and flushes from the
// handler's goroutine), so it has no lock.
type batchWriter struct {
	http.ResponseWriter
	flusher http.Flusher
	held    bool // flushes are deferred to flush
	pending bool // a deferred flush is owed
}

// Flush implements http.Flusher.
func (w *batchWriter) Flush() {
	if w.held {
		w.pending = true
		return
	}
	w.pending = false
	w.flusher.Flush()
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *batchWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// hold defers connect's flushes until flush (nil-safe: a stream served
// without the batching handler flushes per event). A stream does not stop
// holding when it has sent its last event: the flush connect makes when it
// closes the stream (end of stream or error) is left to net/http, which
// flushes when the handler returns, so that the last events, the end of
// the stream and, over HTTP/2, the END_STREAM flag leave in one frame.
func (w *batchWriter) hold() {
	if w != nil {
		w.held = true
	}
}

// flush sends what the held flushes deferred.
func (w *batchWriter) flush() {
	if w != nil && w.pending {
		w.pending = false
		w.flusher.Flush()
	}
}

type batchKey struct{}

// batchFrom returns the stream's batchWriter, or nil when the handler was
// mounted without one.
func batchFrom(ctx context.Context) *batchWriter {
	w, _ := ctx.Value(batchKey{}).(*batchWriter)
	return w
}

// Handler returns the service's HTTP path and handler, mounted with
// HandlerOptions and with flush batching for the event streams (Start,
// Connect). Mount the service with it.
func (s *Service) Handler() (string, http.Handler) {
	path, h := processconnect.NewProcessHandler(s, HandlerOptions()...)
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if !ok || (r.URL.Path != processconnect.ProcessStartProcedure && r.URL.Path != processconnect.ProcessConnectProcedure) {
			h.ServeHTTP(w, r)
			return
		}
		bw := &batchWriter{ResponseWriter: w, flusher: f}
		h.ServeHTTP(bw, r.WithContext(context.WithValue(r.Context(), batchKey{}, bw)))
	})
}
