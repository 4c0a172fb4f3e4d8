package container_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCRIUMissingBinaryWarns: a --criu that names a missing binary turns
// memory snapshots off with a warning (not an info line nobody sees) and
// a reason the host reports as a capability.
func TestCRIUMissingBinaryWarns(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	var logs lockedBuffer
	cfg := testConfig(t, t.TempDir())
	cfg.CRIUPath = "/nonexistent/criu"
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d := openDriver(t, cfg)
	if d.CRIUAvailable() {
		t.Fatal("CRIUAvailable with a missing binary")
	}
	if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "memory snapshots are OFF") || !strings.Contains(out, "/nonexistent/criu") {
		t.Errorf("no visible warning for a missing criu; logs:\n%s", out)
	}
	if r := d.CRIUUnavailableReason(); !strings.Contains(r, "criu check failed") {
		t.Errorf("reason %q", r)
	}
}
