package envd

import (
	"context"
	"net"
	"net/http"
	"sync"
	"syscall"
)

type connKey struct{}

// connTracker records every connection the server accepted, its state and
// the snapshot epoch it was accepted in. After a restore from snapshot the
// guest holds TCP sockets whose peers are long gone; /init closes them.
type connTracker struct {
	mu    sync.Mutex
	epoch uint64
	conns map[net.Conn]*connInfo
}

type connInfo struct {
	state http.ConnState
	epoch uint64
}

func newConnTracker() *connTracker {
	return &connTracker{conns: map[net.Conn]*connInfo{}}
}

func (t *connTracker) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// connFromContext returns the connection carrying a request.
func connFromContext(ctx context.Context) net.Conn {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	return c
}

func (t *connTracker) onState(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateNew:
		t.pruneLocked()
		t.conns[c] = &connInfo{state: st, epoch: t.epoch}
	case http.StateClosed:
		delete(t.conns, c)
	case http.StateHijacked:
		// A hijacked connection (a spliced upload) is still a socket
		// that may outlive a snapshot, so /init must be able to close
		// it. net/http no longer reports its close: it is dropped once
		// found closed (pruneLocked).
		if ci, ok := t.conns[c]; ok {
			ci.state = st
		}
	default:
		if ci, ok := t.conns[c]; ok {
			ci.state = st
		}
	}
}

// pruneLocked forgets hijacked connections their handler has closed.
func (t *connTracker) pruneLocked() {
	for c, ci := range t.conns {
		if ci.state == http.StateHijacked && isClosed(c) {
			delete(t.conns, c)
		}
	}
}

// isClosed reports whether c has been closed on this side.
func isClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil
}

// bump starts a new epoch and returns it: connections accepted from now on
// belong to it, every earlier one is "pre-snapshot".
func (t *connTracker) bump() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.epoch++
	return t.epoch
}

// closeIdle closes every idle keep-alive connection and returns how many.
func (t *connTracker) closeIdle() int {
	t.mu.Lock()
	var idle []net.Conn
	for c, ci := range t.conns {
		if ci.state == http.StateIdle {
			idle = append(idle, c)
		}
	}
	t.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
	return len(idle)
}

// closeBefore closes every connection accepted before epoch, except keep.
func (t *connTracker) closeBefore(epoch uint64, keep net.Conn) int {
	t.mu.Lock()
	var old []net.Conn
	for c, ci := range t.conns {
		if ci.epoch < epoch && c != keep {
			old = append(old, c)
			if ci.state == http.StateHijacked {
				delete(t.conns, c) // no StateClosed will follow
			}
		}
	}
	t.mu.Unlock()
	for _, c := range old {
		_ = c.Close()
	}
	return len(old)
}

// count returns the number of tracked connections that are still open.
func (t *connTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked()
	return len(t.conns)
}
