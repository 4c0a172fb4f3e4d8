package process

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// streamKind names the output stream a chunk came from.
type streamKind uint8

const (
	kindStdout streamKind = iota
	kindStderr
	kindPTY
)

// chunk is one piece of output as read from a process.
type chunk struct {
	kind streamKind
	data []byte
	buf  *outBuf // the pooled buffer data points into; nil when data is private
}

// release drops one holder's reference to the chunk's pooled buffer.
func (c chunk) release() {
	if c.buf != nil {
		c.buf.release()
	}
}

// outBuf is a read buffer that output chunks point into, shared by the
// reader and every subscriber a chunk was queued for. Each holds one
// reference; the last to release it returns it to its pool, so a buffer is
// never read into again while a queued or sending chunk still points into
// it. A holder that never releases (a dropped subscriber's queue) only
// costs the reuse: the garbage collector takes the buffer.
type outBuf struct {
	b    []byte
	refs atomic.Int32
	pool *bufPool
}

func (b *outBuf) hold() { b.refs.Add(1) }

func (b *outBuf) release() {
	if b.refs.Add(-1) == 0 {
		b.pool.put(b)
	}
}

// bufPool is one output reader's free list of read buffers. It is not a
// sync.Pool: buffers survive garbage collections, so a stream moving bulk
// output reuses a few warm buffers instead of allocating (and zeroing, and
// faulting in) a fresh one per message.
type bufPool struct {
	free chan *outBuf
}

// pooledBuffers is how many idle buffers a reader keeps.
const pooledBuffers = 4

func newBufPool() *bufPool {
	return &bufPool{free: make(chan *outBuf, pooledBuffers)}
}

// get returns a buffer of size bytes holding one reference (the caller's).
func (p *bufPool) get(size int) *outBuf {
	select {
	case b := <-p.free:
		if len(b.b) == size {
			b.refs.Store(1)
			return b
		}
	default:
	}
	b := &outBuf{b: make([]byte, size), pool: p}
	b.refs.Store(1)
	return b
}

func (p *bufPool) put(b *outBuf) {
	select {
	case p.free <- b:
	default:
	}
}

// event wraps the chunk as a data event.
func (c chunk) event() *pb.ProcessEvent {
	d := &pb.ProcessEvent_DataEvent{}
	switch c.kind {
	case kindStdout:
		d.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: c.data}
	case kindStderr:
		d.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: c.data}
	case kindPTY:
		d.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: c.data}
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}
}

// errSlowSubscriber is why a subscriber that stopped consuming is dropped.
var errSlowSubscriber = errors.New("subscriber too slow: its output buffer stayed full, so it was disconnected to keep the process running; re-attach with Connect")

// subscriber is one attached stream. Its channel is filled by the hub and
// drained by exactly one handler goroutine.
type subscriber struct {
	ch      chan chunk
	queued  atomic.Int64  // output bytes in ch
	dropped chan struct{} // closed when the hub drops this subscriber
	err     error         // why it was dropped; written before dropped is closed
}

// taken records that the handler took c from the channel.
func (s *subscriber) taken(c chunk) {
	s.queued.Add(-int64(len(c.data)))
}

// hub fans a process's output out to its subscribers.
//
// Invariants:
//   - Output is delivered to every subscriber in the order each stream was
//     read; a subscriber's channel is only sent to with hub.mu held.
//   - The readers are paced by the fastest subscriber: a reader waits only
//     while every subscriber's buffer is full, and for at most stallTimeout;
//     after that the full subscribers are dropped. A subscriber that is full
//     while another has room is dropped at once. So no subscriber can hold
//     the process or the other subscribers back for longer than stallTimeout.
//   - With no subscriber attached output goes to a bounded backlog (oldest
//     bytes dropped first) that the next subscriber receives before anything
//     else.
//   - A chunk in a subscriber's channel holds a reference to its pooled
//     buffer (see outBuf); the handler releases it once the chunk is sent.
//   - finish is called once, after the last publish; then ended is closed.
type hub struct {
	subBuffer    int   // messages a subscriber may have queued
	subBytes     int64 // output bytes a subscriber may have queued
	stallTimeout time.Duration

	// room gets a token whenever a subscriber frees a slot or the set of
	// subscribers changes. Its capacity is the maximum number of publishers
	// (stdout and stderr readers), so a change wakes all of them.
	room chan struct{}

	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	backlog backlog
	end     *pb.ProcessEvent
	ended   chan struct{}
}

func newHub(subBuffer, subBytes, backlogLimit int, stallTimeout time.Duration) *hub {
	return &hub{
		subBuffer:    subBuffer,
		subBytes:     int64(subBytes),
		stallTimeout: stallTimeout,
		room:         make(chan struct{}, 2),
		subs:         map[*subscriber]struct{}{},
		backlog:      backlog{limit: backlogLimit},
		ended:        make(chan struct{}),
	}
}

// poke wakes waiting publishers without blocking.
func (h *hub) poke() {
	for range cap(h.room) {
		select {
		case h.room <- struct{}{}:
		default:
			return
		}
	}
}

// freed tells waiting publishers that a subscriber consumed a message.
func (h *hub) freed() {
	select {
	case h.room <- struct{}{}:
	default:
	}
}

// publish delivers c to every subscriber, or to the backlog when there is
// none. timer is the calling reader's own timer (stopped, reusable). The
// caller keeps its own reference to c's buffer and releases it afterwards.
func (h *hub) publish(c chunk, timer *time.Timer) {
	waiting, stalled := false, false
	defer func() {
		if waiting {
			timer.Stop()
		}
	}()
	for {
		h.mu.Lock()
		if len(h.subs) == 0 {
			h.backlog.add(c)
			h.mu.Unlock()
			return
		}
		room := stalled
		for s := range h.subs {
			if h.hasRoom(s) {
				room = true
				break
			}
		}
		if room {
			for s := range h.subs {
				if !h.hasRoom(s) {
					h.dropLocked(s, errSlowSubscriber)
					continue
				}
				if c.buf != nil {
					c.buf.hold()
				}
				s.queued.Add(int64(len(c.data)))
				s.ch <- c // cannot block: only publishers send, with h.mu held
			}
			if len(h.subs) == 0 {
				// Every subscriber was dropped: keep c for the next one.
				h.backlog.add(c)
			}
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		if !waiting {
			waiting = true
			timer.Reset(h.stallTimeout)
		}
		select {
		case <-h.room:
		case <-timer.C:
			stalled = true
		}
	}
}

// hasRoom reports whether s can take another message.
func (h *hub) hasRoom(s *subscriber) bool {
	return len(s.ch) < cap(s.ch) && s.queued.Load() < h.subBytes
}

// subscribe attaches a new subscriber and hands it the backlog to replay.
func (h *hub) subscribe() (*subscriber, []chunk) {
	s := &subscriber{ch: make(chan chunk, h.subBuffer), dropped: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	replay := h.backlog.take()
	h.subs[s] = struct{}{}
	h.poke()
	return s, replay
}

// unsubscribe detaches s (a no-op when it was dropped already).
func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		h.removeLocked(s)
	}
}

// dropLocked detaches s and tells its handler why.
func (h *hub) dropLocked(s *subscriber, err error) {
	h.removeLocked(s)
	s.err = err
	close(s.dropped)
}

// removeLocked detaches s. When it was the last subscriber, the output it
// had not sent yet moves to the backlog so the next subscriber gets it.
func (h *hub) removeLocked(s *subscriber) {
	delete(h.subs, s)
	if len(h.subs) == 0 {
		for {
			select {
			case c := <-s.ch:
				h.backlog.add(c)
				c.release()
				continue
			default:
			}
			break
		}
	}
	h.poke()
}

// finish records the end event; every current and future subscriber gets it
// after the output queued before it.
func (h *hub) finish(end *pb.ProcessEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end = end
	close(h.ended)
}

// endEvent returns the end event; only valid once ended is closed.
func (h *hub) endEvent() *pb.ProcessEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.end
}

// backlog keeps the most recent output produced while nobody was attached,
// at most limit bytes. Adjacent chunks of one stream are merged so that a
// stream of tiny writes does not become a stream of tiny messages.
type backlog struct {
	limit  int
	size   int
	chunks []chunk
}

// maxMerged bounds a merged backlog chunk (one replayed message).
const maxMerged = 64 << 10

func (b *backlog) add(c chunk) {
	if b.limit <= 0 || len(c.data) == 0 {
		return
	}
	if len(c.data) > b.limit {
		c.data = c.data[len(c.data)-b.limit:]
	}
	// Every stored chunk is a private copy, so merging may append in place.
	if n := len(b.chunks); n > 0 && b.chunks[n-1].kind == c.kind && len(b.chunks[n-1].data)+len(c.data) <= maxMerged {
		last := &b.chunks[n-1]
		if cap(last.data)-len(last.data) < len(c.data) {
			grown := make([]byte, len(last.data), min(maxMerged, max(2*len(last.data), len(last.data)+len(c.data))))
			copy(grown, last.data)
			last.data = grown
		}
		last.data = append(last.data, c.data...)
	} else {
		b.chunks = append(b.chunks, chunk{kind: c.kind, data: append(make([]byte, 0, len(c.data)), c.data...)}) // buf nil: a private copy
	}
	b.size += len(c.data)
	for b.size > b.limit {
		first := &b.chunks[0]
		over := b.size - b.limit
		if over >= len(first.data) {
			b.size -= len(first.data)
			b.chunks[0] = chunk{}
			b.chunks = b.chunks[1:]
			continue
		}
		first.data = first.data[over:]
		b.size -= over
	}
}

// take empties the backlog and returns its chunks.
func (b *backlog) take() []chunk {
	out := b.chunks
	b.chunks, b.size = nil, 0
	return out
}
