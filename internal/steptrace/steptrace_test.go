package steptrace

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestTrace: the marks come out in order in one debug record; nothing at
// info level, and a nil trace is a no-op.
func TestTrace(t *testing.T) {
	var buf bytes.Buffer
	tr := New()
	tr.Mark("a")
	tr.Mark("b")
	tr.Log(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), "op", "id", "x")
	out := buf.String()
	if !strings.Contains(out, "steps=\"a=") || !strings.Contains(out, " b=") || !strings.Contains(out, "total_ms=") || !strings.Contains(out, "id=x") {
		t.Fatalf("record = %q", out)
	}
	buf.Reset()
	tr.Log(slog.New(slog.NewTextHandler(&buf, nil)), "op")
	if buf.Len() != 0 {
		t.Fatalf("logged at info level: %q", buf.String())
	}
	var nilT *Trace
	nilT.Mark("x")
	nilT.Log(slog.Default(), "op")
}
