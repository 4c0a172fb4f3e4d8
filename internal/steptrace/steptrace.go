// Package steptrace times the named steps of one request-path operation
// (a capsule create in the control plane or the agent) and logs them at
// debug level in one record; docs/PERFORMANCE.md reads the split of the
// create path from these records. A nil *Trace does nothing.
package steptrace

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Trace is one operation's step timings.
type Trace struct {
	begin, last time.Time
	steps       []string
}

// New starts a trace now.
func New() *Trace {
	now := time.Now()
	return &Trace{begin: now, last: now}
}

// Mark ends step name, timed from the previous mark (or the start).
func (t *Trace) Mark(name string) {
	if t == nil {
		return
	}
	now := time.Now()
	t.steps = append(t.steps, fmt.Sprintf("%s=%.2fms", name, ms(now.Sub(t.last))))
	t.last = now
}

// Log writes the steps and the total at debug level with attrs.
func (t *Trace) Log(log *slog.Logger, msg string, attrs ...any) {
	if t == nil || !log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	log.Debug(msg, append(attrs, "steps", strings.Join(t.steps, " "), "total_ms", ms(time.Since(t.begin)))...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
