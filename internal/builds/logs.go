package builds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// Build log bounds.
const (
	// MaxLogBytes is how much of a build's log is kept: the oldest records
	// are deleted beyond it.
	MaxLogBytes = 10 << 20
	// maxRecordBytes splits output into records of at most this size.
	maxRecordBytes = 32 << 10
	// logFlushEvery is how often buffered records reach the store.
	logFlushEvery = 200 * time.Millisecond
)

// Log streams.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	// StreamSystem marks the runner's own lines: step boundaries with
	// their durations, pulls, the outcome.
	StreamSystem = "system"
)

// buildLog appends a build's log records to the store in batches and
// keeps only the last MaxLogBytes of data. Safe for concurrent use.
type buildLog struct {
	st  store.Store
	id  string
	log *slog.Logger

	mu      sync.Mutex
	seq     int64
	pending []store.BuildLog
	sizes   []recSize // kept records, oldest first
	total   int64
	trimTo  int64 // delete records with seq < trimTo at the next flush
	trimmed int64
	done    chan struct{}
	stopped chan struct{}
}

type recSize struct {
	seq  int64
	size int64
}

func newBuildLog(st store.Store, buildID string, log *slog.Logger) *buildLog {
	l := &buildLog{st: st, id: buildID, log: log, done: make(chan struct{}), stopped: make(chan struct{})}
	go l.loop()
	return l
}

func (l *buildLog) loop() {
	defer close(l.stopped)
	t := time.NewTicker(logFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			l.flush()
			return
		case <-t.C:
			l.flush()
		}
	}
}

// Close flushes what is buffered and stops the flusher.
func (l *buildLog) Close() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	<-l.stopped
}

// Systemf adds a runner line to step's log.
func (l *buildLog) Systemf(step int, format string, args ...any) {
	l.add(step, StreamSystem, []byte(fmt.Sprintf(format, args...)+"\n"))
}

// Output adds a chunk of a step's output.
func (l *buildLog) Output(step int, stream string, data []byte) {
	for len(data) > 0 {
		n := min(len(data), maxRecordBytes)
		// Keep multi-byte characters whole where the cut allows it.
		for n < len(data) && n > maxRecordBytes-4 && !utf8.RuneStart(data[n]) {
			n--
		}
		l.add(step, stream, data[:n])
		data = data[n:]
	}
}

func (l *buildLog) add(step int, stream string, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.pending = append(l.pending, store.BuildLog{
		Seq: l.seq, Time: time.Now().UTC(), Step: step, Stream: stream, Data: append([]byte(nil), data...),
	})
	l.sizes = append(l.sizes, recSize{l.seq, int64(len(data))})
	l.total += int64(len(data))
	for l.total > MaxLogBytes && len(l.sizes) > 1 {
		l.total -= l.sizes[0].size
		l.sizes = l.sizes[1:]
		l.trimTo = l.sizes[0].seq
	}
}

func (l *buildLog) flush() {
	l.mu.Lock()
	recs := l.pending
	l.pending = nil
	trimTo := l.trimTo
	l.mu.Unlock()
	// Records the bound already dropped need not be written at all.
	for len(recs) > 0 && recs[0].Seq < trimTo {
		recs = recs[1:]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if len(recs) > 0 {
		if err := l.st.AppendBuildLogs(ctx, l.id, recs); err != nil {
			l.log.Warn("store build log records", "records", len(recs), "err", err)
		}
	}
	if trimTo > l.trimmed {
		if err := l.st.TrimBuildLogs(ctx, l.id, trimTo); err != nil {
			l.log.Warn("trim build log", "err", err)
			return
		}
		l.trimmed = trimTo
	}
}
