package process

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
)

// maxPendingInput bounds input queued for a process that does not read it;
// senders wait for room beyond it.
const maxPendingInput = 1 << 20

var (
	errInputClosed = errors.New("stdin is closed")
	errProcessGone = errors.New("process has exited")
)

// inputWriter coalesces input for one process: senders append to a queue and
// return, one goroutine writes everything queued so far in a single write.
// Fast typing therefore becomes few large writes instead of one per key.
type inputWriter struct {
	f         *os.File
	closeFile bool // close f when input ends (stdin pipe; a PTY master is closed by its owner)

	wake chan struct{} // cap 1: queue changed
	done chan struct{} // closed when the writer goroutine returned

	writes atomic.Uint64 // write calls made (coalescing shows as writes << sends)

	mu      sync.Mutex
	buf     []byte
	spare   []byte
	closing bool          // close after flushing what is queued (CloseStdin)
	err     error         // set once input can no longer be accepted
	space   chan struct{} // closed when the queue was taken; created by waiting senders
}

func newInputWriter(f *os.File, closeFile bool) *inputWriter {
	w := &inputWriter{f: f, closeFile: closeFile, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *inputWriter) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// write queues p. It blocks only while more than maxPendingInput bytes are
// queued, until ctx is done.
func (w *inputWriter) write(ctx context.Context, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	for {
		w.mu.Lock()
		switch {
		case w.err != nil:
			err := w.err
			w.mu.Unlock()
			return err
		case w.closing:
			w.mu.Unlock()
			return errInputClosed
		case len(w.buf) == 0 || len(w.buf)+len(p) <= maxPendingInput:
			w.buf = append(w.buf, p...)
			w.mu.Unlock()
			w.poke()
			return nil
		}
		if w.space == nil {
			w.space = make(chan struct{})
		}
		space := w.space
		w.mu.Unlock()
		select {
		case <-space:
		case <-w.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeInput closes the input after everything queued is written.
func (w *inputWriter) closeInput() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.closing {
		return errInputClosed
	}
	w.closing = true
	w.poke()
	return nil
}

// stop ends the writer when the process is gone and waits for it. A write
// blocked on a full pipe is interrupted by closing the file (pipes) or by
// the owner closing the PTY master.
func (w *inputWriter) stop() {
	w.mu.Lock()
	if w.err == nil {
		w.err = errProcessGone
	}
	w.mu.Unlock()
	w.poke()
	if w.closeFile {
		_ = w.f.Close()
	}
}

func (w *inputWriter) loop() {
	defer close(w.done)
	for range w.wake {
		w.mu.Lock()
		data := w.buf
		w.buf = w.spare[:0]
		w.spare = nil
		closing, failed := w.closing, w.err != nil
		if w.space != nil {
			close(w.space)
			w.space = nil
		}
		w.mu.Unlock()

		if failed {
			return
		}
		if len(data) > 0 {
			w.writes.Add(1)
			if _, err := w.f.Write(data); err != nil {
				w.fail(errProcessGone)
				return
			}
		}

		w.mu.Lock()
		if cap(data) <= maxPendingInput*2 {
			w.spare = data[:0]
		}
		if closing && len(w.buf) == 0 {
			w.err = errInputClosed
			w.mu.Unlock()
			if w.closeFile {
				_ = w.f.Close()
			}
			return
		}
		more := len(w.buf) > 0 || w.err != nil
		w.mu.Unlock()
		if more {
			w.poke()
		}
	}
}

// fail records that no more input can be written.
func (w *inputWriter) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
	if w.space != nil {
		close(w.space)
		w.space = nil
	}
}
