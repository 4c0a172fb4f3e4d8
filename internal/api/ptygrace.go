package api

import (
	"strconv"
	"sync"
	"time"
)

// MaxPTYGrace bounds ?grace= on the PTY WebSocket.
const MaxPTYGrace = time.Hour

// ptyReaper holds the delayed kills of shells whose client went away with
// ?grace=N: the shell lives N more seconds, so a client whose socket dropped
// (or a dashboard tab opened again) re-attaches with ?pid= and finds it.
// An attach cancels the pending kill. The timers live in this replica's
// memory: an attach through another replica does not cancel them.
type ptyReaper struct {
	mu     sync.Mutex
	timers map[string]*time.Timer
}

func ptyKey(capsuleID string, pid uint32) string {
	return capsuleID + "/" + strconv.FormatUint(uint64(pid), 10)
}

// schedule runs kill after d unless cancel(key) comes first; a second
// schedule for the key replaces the first.
func (p *ptyReaper) schedule(key string, d time.Duration, kill func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timers == nil {
		p.timers = map[string]*time.Timer{}
	}
	if t := p.timers[key]; t != nil {
		t.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		p.mu.Lock()
		mine := p.timers[key] == t
		if mine {
			delete(p.timers, key)
		}
		p.mu.Unlock()
		if mine {
			kill()
		}
	})
	p.timers[key] = t
}

// cancel stops a pending kill; it reports whether one was pending.
func (p *ptyReaper) cancel(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.timers[key]
	if t == nil {
		return false
	}
	t.Stop()
	delete(p.timers, key)
	return true
}

// pending reports whether a kill is scheduled for key (tests).
func (p *ptyReaper) pending(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.timers[key] != nil
}
