package files

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// copyBufSize is the buffer of the upload copy loop (one per upload in
// flight, pooled).
const copyBufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// readError marks an error of the source (the request body), as opposed to
// an error writing the destination.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// copyToFile copies src to dst through a pooled 1 MiB buffer. Source errors
// come back as *readError, destination errors as they are. (Measured: a
// plain loop costs less CPU per byte than overlapping reads and writes in
// two goroutines on a 2-vCPU machine.)
func copyToFile(dst *os.File, src io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
		}
		if errors.Is(rerr, io.EOF) {
			return written, nil
		}
		if rerr != nil {
			return written, &readError{rerr}
		}
	}
}

// spliceBody copies exactly size body bytes of a hijacked HTTP/1 connection
// into dst: first what the server had already buffered, then the rest
// straight from the socket with splice(2) (os.File.ReadFrom), so the data
// never passes through user space. A body that ends early is a *readError.
func spliceBody(dst *os.File, buffered *bufio.Reader, conn net.Conn, size int64) error {
	head := min(int64(buffered.Buffered()), size)
	if head > 0 {
		n, err := copyToFile(dst, io.LimitReader(buffered, head))
		if err != nil {
			return err
		}
		if n != head {
			return &readError{fmt.Errorf("lost buffered body bytes: %d of %d", n, head)}
		}
	}
	rest := size - head
	if rest == 0 {
		return nil
	}
	n, err := dst.ReadFrom(io.LimitReader(conn, rest))
	if err != nil {
		if isNoSpace(err) {
			return err
		}
		return &readError{err}
	}
	if n != rest {
		return &readError{fmt.Errorf("body ended after %d of %d bytes", head+n, size)}
	}
	return nil
}

// drainBody reads and discards what a client still sends after a failed
// upload: until EOF, limit bytes, or idle without data (the client has sent
// everything and waits for the answer). Errors end it quietly.
func drainBody(r *bufio.Reader, conn net.Conn, limit int64, idle time.Duration) {
	buf := make([]byte, 64<<10)
	for total := int64(0); total < limit; {
		_ = conn.SetReadDeadline(time.Now().Add(idle))
		n, err := r.Read(buf)
		total += int64(n)
		if err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
}
