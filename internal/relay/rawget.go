package relay

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"time"
)

// RawResponse is the answer to a request sent by RoundTripRaw on a
// connection of its own: a sized body can then be moved from that socket
// to the client's with splice(2) (CopyBody), which the Transport's body
// reader (a bufio.Reader) rules out. File downloads take it on both
// proxies (the control plane's files API, the agent's envd route).
type RawResponse struct {
	*http.Response
	conn net.Conn
	br   *bufio.Reader
	stop func() bool
}

// RoundTripRaw sends req (no body; "Connection: close" is added) on a new
// TCP connection to addr and reads the response headers within
// headerTimeout. Cancelling req's context closes the connection. The
// caller closes the response.
func RoundTripRaw(req *http.Request, addr string, dialTimeout, headerTimeout time.Duration) (*RawResponse, error) {
	ctx := req.Context()
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	fail := func(err error) (*RawResponse, error) {
		stop()
		_ = c.Close()
		return nil, err
	}
	req.Close = true
	_ = c.SetDeadline(time.Now().Add(headerTimeout))
	if err := req.Write(c); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail(err)
	}
	_ = c.SetDeadline(time.Time{})
	return &RawResponse{Response: resp, conn: c, br: br, stop: stop}, nil
}

// Close closes the connection and the response (in that order: closing
// an unread body first would drain it).
func (r *RawResponse) Close() error {
	r.stop()
	err := r.conn.Close()
	_ = r.Body.Close()
	return err
}

// Sized reports whether the body has a known length (Content-Length, no
// transfer coding): CopyBody can then splice it.
func (r *RawResponse) Sized() bool {
	return r.ContentLength >= 0 && len(r.TransferEncoding) == 0
}

// CopyBody copies the body to w and returns how many bytes of a sized
// body did not arrive (> 0: the body was cut short; the caller aborts its
// own response rather than answer a short file). For a sized body, when
// w implements io.ReaderFrom and useReadFrom is set (w is a plain-TCP
// server connection), the bytes after those read with the headers go from
// socket to socket in the kernel; otherwise they are copied through buf.
// For an unsized body, missing is 0 and a read error is returned as err.
func (r *RawResponse) CopyBody(w io.Writer, useReadFrom bool, buf []byte) (missing int64, err error) {
	if !r.Sized() {
		src := &readErr{r: r.Body}
		_, err := io.CopyBuffer(writerOnly{w}, src, buf)
		if src.err != nil {
			return 0, src.err
		}
		return 0, err
	}
	head, _ := r.br.Peek(int(min(int64(r.br.Buffered()), r.ContentLength)))
	if _, err := w.Write(head); err != nil {
		return r.ContentLength - int64(len(head)), err
	}
	rest := &io.LimitedReader{R: r.conn, N: r.ContentLength - int64(len(head))}
	if rf, ok := w.(io.ReaderFrom); ok && useReadFrom {
		_, err = rf.ReadFrom(rest)
	} else {
		_, err = io.CopyBuffer(writerOnly{w}, rest, buf)
	}
	return rest.N, err
}

// writerOnly hides a writer's ReadFrom (which net/http's ResponseWriter
// would run through 32 KiB buffers for a source it cannot splice).
type writerOnly struct{ io.Writer }

// readErr remembers its reader's first error other than io.EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
