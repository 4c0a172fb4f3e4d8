package api

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPTYReaper(t *testing.T) {
	var r ptyReaper
	var killed atomic.Int32
	kill := func() { killed.Add(1) }

	r.schedule(ptyKey("cl-a", 7), 20*time.Millisecond, kill)
	if !r.pending(ptyKey("cl-a", 7)) || !r.cancel(ptyKey("cl-a", 7)) || r.cancel(ptyKey("cl-a", 7)) {
		t.Fatal("a scheduled kill is pending until cancelled, once")
	}
	time.Sleep(60 * time.Millisecond)
	if killed.Load() != 0 {
		t.Fatal("a cancelled kill ran")
	}

	r.schedule(ptyKey("cl-a", 8), 20*time.Millisecond, kill)
	r.schedule(ptyKey("cl-a", 8), 40*time.Millisecond, kill) // replaces the first
	deadline := time.Now().Add(5 * time.Second)
	for killed.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(60 * time.Millisecond)
	if got := killed.Load(); got != 1 {
		t.Fatalf("kills = %d, want 1 (the replaced timer must not run)", got)
	}
	if r.pending(ptyKey("cl-a", 8)) {
		t.Fatal("a kill that ran is still pending")
	}
}
