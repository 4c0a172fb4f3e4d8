package process

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// proc is one process started by the service.
//
// Lifecycle: forked → (readers + waiter running) → waited (reaped by the
// waiter; output still draining) → done (end event recorded in the hub) →
// collected (a subscriber delivered the end event, or the retention time
// passed) and removed from the service's table.
type proc struct {
	pid    int
	tag    *string
	config *pb.ProcessConfig
	cmd    *exec.Cmd
	fds    *fds
	input  *inputWriter // nil when the process has no stdin pipe and no PTY
	hub    *hub

	exited     atomic.Bool // the waiter reaped the process
	drainUntil time.Time   // written before exited is set: hard end of output draining
	waited     chan struct{}
	done       chan struct{}

	retainMu sync.Mutex
	retain   *time.Timer
}

// isDone reports whether the process ended and its end event is recorded.
func (p *proc) isDone() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// isWaited reports whether the waiter reaped the process.
func (p *proc) isWaited() bool {
	select {
	case <-p.waited:
		return true
	default:
		return false
	}
}

// hasPTY reports whether the process runs on a PTY.
func (p *proc) hasPTY() bool { return p.fds.pty != nil }

// tuning are the knobs of a process's I/O (copied from the Service).
type tuning struct {
	readChunk int
	bulkWait  time.Duration // pause after a mid-sized read (0: none)
	drainIdle time.Duration
	drainMax  time.Duration
}

// run reads the process's output and waits for it. It returns once the end
// event is recorded and every descriptor is closed.
func (p *proc) run(t tuning) {
	var readers sync.WaitGroup
	for _, o := range p.fds.outputs {
		readers.Go(func() { p.read(o, t) })
	}

	waitErr := p.cmd.Wait()
	close(p.waited)

	// A process may leave children that keep its stdout or PTY open (e.g.
	// `server &`). Its end must not wait for them forever: after the
	// process exits, keep reading only while output keeps coming, and never
	// longer than drainMax.
	now := time.Now()
	p.drainUntil = now.Add(t.drainMax)
	p.exited.Store(true)
	for _, o := range p.fds.outputs {
		_ = o.f.SetReadDeadline(now.Add(t.drainIdle))
	}
	readers.Wait()

	if p.input != nil {
		p.input.stop()
	}
	p.fds.closeAll()
	p.hub.finish(endEvent(p.cmd.ProcessState, waitErr))
	close(p.done)
	if p.input != nil {
		<-p.input.done
	}
}

// minReadChunk is the first read buffer of a stream; it doubles up to
// tuning.readChunk while reads fill it, so quiet processes stay small and
// bulk output moves in large messages.
const minReadChunk = 16 << 10

// Bulk pacing (issue 21): a read of at least bulkRead bytes that filled
// less than half the buffer means output streams in about as fast as it is
// read, so each message would carry only what the producer wrote since the
// last read (8–16 KiB for `yes | head`, 4 KiB for many programs), and every
// hop after envd (agent, control plane, client) pays per message. Waiting
// bulkWait before the next read lets the pipe (1 MiB) fill: messages grow to
// what the producer writes in that time, hundreds of KiB at bulk rates. The
// chunk just read is published first, so no output waits; small writes
// (interactive output, a prompt, a line) never trigger the wait.
const (
	bulkRead = 4 << 10
	bulkWait = 250 * time.Microsecond
)

// read forwards one output stream to the hub until EOF (a PTY reports EIO
// once the last slave descriptor closes) or the drain deadline.
func (p *proc) read(o output, t tuning) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	pool := newBufPool()
	size := min(minReadChunk, t.readChunk)
	ob := pool.get(size)
	defer ob.release()
	grown := o.kind != kindStdout // only stdout pipes are enlarged
	for {
		if p.exited.Load() {
			_ = o.f.SetReadDeadline(earliest(time.Now().Add(t.drainIdle), p.drainUntil))
		}
		n, err := o.f.Read(ob.b)
		paced := n >= bulkRead && n < len(ob.b)/2 && t.bulkWait > 0
		if n >= bulkRead && !grown {
			// Bulk output: let the producer run ahead of this reader
			// (see stdoutPipeSize). A pipe may grow with data in it.
			setPipeSize(o.f, stdoutPipeSize)
			grown = true
		}
		if n > 0 {
			if n == len(ob.b) && size < t.readChunk {
				size = min(2*size, t.readChunk)
			}
			if n >= len(ob.b)/2 {
				// Publish the buffer itself; it returns to the pool once
				// every subscriber has sent it.
				c := chunk{kind: o.kind, data: ob.b[:n], buf: ob}
				p.hub.publish(c, timer)
				c.release()
				ob = pool.get(size)
			} else {
				// A small read gets a private copy, so a queued byte never
				// pins a large buffer.
				p.hub.publish(chunk{kind: o.kind, data: append(make([]byte, 0, n), ob.b[:n]...)}, timer)
				if len(ob.b) < size {
					ob.release()
					ob = pool.get(size)
				}
			}
		}
		if paced && err == nil && !p.exited.Load() {
			time.Sleep(t.bulkWait)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// A reader woken late may find the deadline passed while
				// output is still waiting in the pipe: take what is there.
				if rest := drainNow(o.f); len(rest) > 0 {
					p.hub.publish(chunk{kind: o.kind, data: rest}, timer)
				}
			}
			return
		}
	}
}

// maxFinalDrain bounds the last non-blocking read of a stream whose drain
// deadline passed (a pipe holds at most stdoutPipeSize).
const maxFinalDrain = 1 << 20

// drainNow reads what f holds right now without waiting, ignoring its
// deadline (f is nonblocking).
func drainNow(f *os.File) []byte {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var out []byte
	buf := make([]byte, 64<<10)
	_ = rc.Control(func(fd uintptr) {
		for len(out) < maxFinalDrain {
			n, err := unix.Read(int(fd), buf) //nolint:gosec // fd fits in int
			if n <= 0 || err != nil {
				return
			}
			out = append(out, buf[:n]...)
		}
	})
	return out
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// signal delivers sig to the process's group (its children included).
func (p *proc) signal(sig syscall.Signal) error {
	err := unix.Kill(-p.pid, sig)
	if errors.Is(err, unix.ESRCH) {
		select {
		case <-p.waited:
			return errProcessGone
		default:
			// The leader moved itself to another group; signal it alone.
			err = unix.Kill(p.pid, sig)
		}
	}
	return err
}

// endEvent describes how a process ended. A process killed by a signal
// reports exit_code 128+signal (what a shell's $? says), exited=false and a
// status such as "signal: killed".
func endEvent(st *os.ProcessState, waitErr error) *pb.ProcessEvent {
	end := &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: "unknown"}
	if st != nil {
		end.Status = st.String()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				end.Exited = true
				end.ExitCode = int32(ws.ExitStatus()) //nolint:gosec // 0..255
			case ws.Signaled():
				end.ExitCode = 128 + int32(ws.Signal()) //nolint:gosec // signal numbers are small
			}
		}
	} else if waitErr != nil {
		msg := "wait: " + waitErr.Error()
		end.Error = &msg
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
}
