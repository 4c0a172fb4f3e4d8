package agents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// LocalTransport serves requests with an in-process agent's handler (the
// agent of `wrenn up`, in the control plane's own process) instead of a
// loopback TCP connection: the request goes to the handler as a server
// request, and the handler's response body comes back through a
// synchronous in-memory pipe.
//
// Why (issue 21): an output stream through the agent's socket costs the
// process two kernel copies and their read/write system calls per chunk
// (the agent's write, the control plane's read), about half of `wrenn
// up`'s CPU while it streams (docs/PERFORMANCE.md). Through the pipe each
// byte is copied once, from the agent's encoded message into the control
// plane's receive buffer.
//
// Semantics kept from a connection: the handler's context ends when the
// caller's request context ends or the caller closes the response body;
// a handler write blocks until the caller has read it (backpressure: the
// agent buffers nothing for a slow reader); a handler that panics ends
// the body with an error, like a dropped connection; the request body is
// closed once the handler returns.
type LocalTransport struct {
	Handler http.Handler
}

// errLocalClosed is what a handler's write gets once the caller closed the
// response body (a connection reset, in socket terms).
var errLocalClosed = errors.New("agents: in-process response body closed by the client")

// errLocalAborted ends a response body whose handler panicked.
var errLocalAborted = errors.New("agents: in-process handler aborted the response")

// RoundTrip implements http.RoundTripper.
func (t LocalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(r.Context())
	req := r.Clone(ctx)
	req.RequestURI = r.URL.RequestURI()
	req.RemoteAddr = "127.0.0.1:0" // in-process: the caller is this process
	if req.Host == "" {
		req.Host = r.URL.Host
	}
	req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.1", 1, 1
	if req.Body == nil {
		req.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &localWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	body := &localBody{pr: pr, cancel: cancel}
	w.resp = &http.Response{
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Body: body, ContentLength: -1, Request: r,
	}
	// The caller going away (its context ending) releases a handler
	// blocked writing, as a closed connection would.
	stop := context.AfterFunc(r.Context(), func() { _ = pr.CloseWithError(r.Context().Err()) })
	go func() {
		defer func() {
			// Like net/http's server: the request body is closed and the
			// request context ends with the handler, and a panic ends this
			// one exchange (as a dropped connection), not the process; its
			// value reaches the caller in the body's error.
			var abort error
			if v := recover(); v != nil {
				abort = errLocalAborted
				if v != http.ErrAbortHandler { //nolint:errorlint // a sentinel value, compared as net/http does
					abort = fmt.Errorf("%w: panic: %v", errLocalAborted, v)
				}
			}
			_ = req.Body.Close()
			stop() // every byte written was read: nothing left to release
			w.finish(abort)
			cancel()
		}()
		t.Handler.ServeHTTP(w, req)
	}()
	select {
	case <-w.ready:
	case <-r.Context().Done():
		select {
		case <-w.ready: // the answer began as well: hand it over
		default:
			// The caller gave up before the answer began: the handler
			// sees its context end; whatever it still writes is dropped.
			_ = pr.CloseWithError(errLocalClosed)
			return nil, r.Context().Err()
		}
	}
	if w.resp == nil {
		return nil, w.abort
	}
	return w.resp, nil
}

// localWriter is the handler's http.ResponseWriter (and http.Flusher).
type localWriter struct {
	header http.Header
	pw     *io.PipeWriter
	resp   *http.Response
	abort  error         // set instead of resp when the handler panicked before answering
	ready  chan struct{} // closed when resp's status and header are set (or abort)

	once        sync.Once
	wroteHeader bool
}

func (w *localWriter) Header() http.Header { return w.header }

func (w *localWriter) WriteHeader(code int) {
	if w.wroteHeader || code < 200 {
		return // informational answers (1xx) are not forwarded
	}
	w.wroteHeader = true
	w.once.Do(func() {
		w.resp.StatusCode = code
		w.resp.Status = strconv.Itoa(code) + " " + http.StatusText(code)
		w.resp.Header = w.header.Clone()
		if cl := w.header.Get("Content-Length"); cl != "" {
			if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
				w.resp.ContentLength = n
			}
		}
		close(w.ready)
	})
}

func (w *localWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.pw.Write(b)
	if err != nil {
		return n, fmt.Errorf("write: %w", err)
	}
	return n, nil
}

// Flush sends the status and header if they were not yet (the body has
// no buffer to flush: each write reaches the reader directly).
func (w *localWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
}

// finish ends the response once the handler returned; abort is non-nil
// when it panicked.
func (w *localWriter) finish(abort error) {
	if !w.wroteHeader && abort != nil {
		// No answer began: the caller gets the error from RoundTrip.
		w.once.Do(func() {
			w.resp, w.abort = nil, abort
			close(w.ready)
		})
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.pw.CloseWithError(abort) // nil: the reader sees EOF
}

// localBody is the response body the caller reads; closing it ends the
// handler's context.
type localBody struct {
	pr     *io.PipeReader
	cancel context.CancelFunc
}

func (b *localBody) Read(p []byte) (int, error) { return b.pr.Read(p) }

func (b *localBody) Close() error {
	_ = b.pr.CloseWithError(errLocalClosed)
	b.cancel()
	return nil
}
