// Package process implements envd's process.Process Connect service: it
// starts processes (optionally on a PTY, as the user the caller names), fans
// their output out to any number of attached streams, takes their input and
// delivers signals.
//
// Invariants:
//   - Every process runs in its own process group (its own session when it
//     has a PTY); signals go to the whole group.
//   - Output readers never wait on a subscriber that has stopped consuming:
//     they are paced by the fastest attached subscriber, a subscriber whose
//     buffer is full while another has room is dropped at once, and when all
//     are full for stallTimeout they are all dropped. Output produced while
//     nobody is attached goes to a bounded backlog that the next subscriber
//     receives first.
//   - A process stays in the table (List, Connect) from Start until a
//     subscriber has been sent its end event, or until the retention time
//     after it ended passes.
//   - Exactly one goroutine waits on each process; ReapOrphans reaps only
//     zombies that are not such processes.
package process

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/identity"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// Defaults of the service's tuning knobs.
const (
	DefaultKeepalive    = 30 * time.Second
	DefaultSubBuffer    = 256
	DefaultSubBytes     = 16 << 20
	DefaultBacklog      = 1 << 20
	DefaultReadChunk    = 1 << 20 // = stdoutPipeSize: one read can empty a full pipe
	DefaultStallTimeout = 5 * time.Second
	DefaultDrainIdle    = 250 * time.Millisecond
	DefaultDrainMax     = 5 * time.Second
	DefaultRetention    = 10 * time.Minute
)

// Service implements processconnect.ProcessHandler.
type Service struct {
	log      *slog.Logger
	defaults *defaults.Defaults

	// Tuning; set before the service serves requests (tests shorten them).
	keepalive    time.Duration // interval of keepalive events on output streams
	subBuffer    int           // messages buffered per subscriber
	subBytes     int           // output bytes buffered per subscriber
	backlogLimit int           // bytes kept while nobody is attached
	readChunk    int           // bytes per output read
	bulkWait     time.Duration // pause after a mid-sized output read (bulkWait in proc.go)
	stallTimeout time.Duration // longest a reader waits for a subscriber with no room
	drainIdle    time.Duration // after exit: stop reading output silent this long
	drainMax     time.Duration // after exit: stop reading output after this long
	retention    time.Duration // keep an ended process whose end nobody received

	// forkMu is held shared from fork until the child is registered, and
	// exclusively by the orphan reaper while it reaps, so the reaper never
	// takes a child the service is about to wait on.
	forkMu sync.RWMutex

	mu       sync.Mutex
	procs    map[int]*proc // by pid: started and not yet collected
	children map[int]*proc // by pid: started and not yet waited for
	tags     map[string]struct{}
	closed   bool
	wg       sync.WaitGroup
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// NewService returns a process service that resolves users and defaults
// through d.
func NewService(logger *slog.Logger, d *defaults.Defaults) *Service {
	return &Service{
		log:          logger,
		defaults:     d,
		keepalive:    DefaultKeepalive,
		subBuffer:    DefaultSubBuffer,
		subBytes:     DefaultSubBytes,
		backlogLimit: DefaultBacklog,
		readChunk:    DefaultReadChunk,
		bulkWait:     bulkWait,
		stallTimeout: DefaultStallTimeout,
		drainIdle:    DefaultDrainIdle,
		drainMax:     DefaultDrainMax,
		retention:    DefaultRetention,
		procs:        map[int]*proc{},
		children:     map[int]*proc{},
		tags:         map[string]struct{}{},
	}
}

// compressMinBytes is the smallest response message a handler compresses
// (when the client accepts gzip). Connect's default compresses every
// message; for terminal echo and start/end events that only adds latency.
const compressMinBytes = 16 << 10

// HandlerOptions are the connect options the service is mounted with
// (Handler uses them):
// small messages — keystroke echo, start and end events — are never
// gzipped, bulk output still is when the client asks for it.
func HandlerOptions() []connect.HandlerOption {
	return []connect.HandlerOption{connect.WithCompressMinBytes(compressMinBytes)}
}

// Close kills every process the service started (SIGKILL to its process
// group) and waits until all of them are reaped and their output closed.
// Start fails after Close.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	running := slices.Collect(maps.Values(s.children))
	s.mu.Unlock()
	for _, p := range running {
		_ = p.signal(syscall.SIGKILL)
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		p.stopRetention()
	}
}

// List returns every process that is not collected yet.
func (s *Service) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	s.mu.Lock()
	ps := slices.SortedFunc(maps.Values(s.procs), func(a, b *proc) int { return cmp.Compare(a.pid, b.pid) })
	s.mu.Unlock()
	out := &pb.ListResponse{Processes: make([]*pb.ProcessInfo, 0, len(ps))}
	for _, p := range ps {
		out.Processes = append(out.Processes, &pb.ProcessInfo{Config: p.config, Pid: uint32(p.pid), Tag: p.tag}) //nolint:gosec // pids are positive
	}
	return connect.NewResponse(out), nil
}

// Start launches a process and streams its events until it ends. The
// process keeps running when the caller goes away; Connect re-attaches.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	p, sub, err := s.start(req)
	if err != nil {
		return err
	}
	return s.pump(ctx, p, sub, nil, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// Connect attaches to a process by pid or tag and streams its events: a
// start event, the backlog, then live output and the end event.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub, replay := p.hub.subscribe()
	return s.pump(ctx, p, sub, replay, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

// Update resizes a process's PTY.
func (s *Service) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty == nil {
		return connect.NewResponse(&pb.UpdateResponse{}), nil
	}
	if !p.hasPTY() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no PTY to resize", p.pid))
	}
	size := req.Msg.GetPty().GetSize()
	if size.GetCols() == 0 || size.GetRows() == 0 || size.GetCols() > 0xffff || size.GetRows() > 0xffff {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid pty size %dx%d", size.GetCols(), size.GetRows()))
	}
	if p.isDone() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has exited", p.pid))
	}
	if err := setWinsize(p.fds.pty, size); err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// SendInput queues one chunk of input for a process.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := writeInput(ctx, p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput takes a start message naming the process, then input chunks
// in order.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			if p != nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("start sent twice on one input stream"))
			}
			found, err := s.find(ev.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the first message of an input stream must be start"))
			}
			if err := writeInput(ctx, p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input stream message has no event"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// SendSignal delivers SIGTERM or SIGKILL to a process's group.
func (s *Service) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unsupported signal %v: use SIGNAL_SIGTERM or SIGNAL_SIGKILL", req.Msg.GetSignal()))
	}
	if err := p.signal(sig); err != nil {
		if errors.Is(err, errProcessGone) {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has exited", p.pid))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("signal process %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin closes a process's stdin once the queued input is written.
func (s *Service) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if p.hasPTY() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has a PTY, whose input cannot be closed: use Ctrl+D (send byte 0x04 as pty input)", p.pid))
	}
	if p.input == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d was started without stdin", p.pid))
	}
	if err := p.input.closeInput(); err != nil {
		return nil, inputError(p, err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

// start validates the request, forks the process and registers it. The
// returned subscriber was attached before the fork, so it sees all output.
func (s *Service) start(req *connect.Request[pb.StartRequest]) (*proc, *subscriber, error) {
	u, err := s.resolveUser(req.Header())
	if err != nil {
		return nil, nil, err
	}
	sp, err := prepare(req.Msg, u, s.defaults.Cwd(u), s.defaults.Envs())
	if err != nil {
		return nil, nil, err
	}
	tag := req.Msg.Tag
	if err := s.reserveTag(tag); err != nil {
		return nil, nil, err
	}
	defer s.releaseTag(tag)

	cmd, f, err := command(sp, identity.CanSwitch())
	if err != nil {
		return nil, nil, err
	}
	p := &proc{
		tag:    tag,
		config: sp.config,
		cmd:    cmd,
		fds:    f,
		hub:    newHub(s.subBuffer, s.subBytes, s.backlogLimit, s.stallTimeout),
		waited: make(chan struct{}),
		done:   make(chan struct{}),
	}
	sub, _ := p.hub.subscribe()

	s.forkMu.RLock()
	if err := cmd.Start(); err != nil {
		s.forkMu.RUnlock()
		f.closeAll()
		return nil, nil, startError(sp.path, err)
	}
	p.pid = cmd.Process.Pid
	raiseOOMScore(p.pid)
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.children[p.pid] = p
		if old := s.procs[p.pid]; old != nil {
			// The pid was reused while an ended process's end was still
			// uncollected; the new process wins.
			old.stopRetention()
		}
		s.procs[p.pid] = p
		s.wg.Add(1)
	}
	s.mu.Unlock()
	s.forkMu.RUnlock()
	f.closeChild()

	if closed {
		_ = p.signal(syscall.SIGKILL)
		_ = cmd.Wait()
		f.closeAll()
		return nil, nil, connect.NewError(connect.CodeUnavailable, errors.New("process service is shutting down"))
	}
	if f.stdin != nil {
		p.input = newInputWriter(f.stdin, !p.hasPTY())
	}
	s.log.Debug("process started", "pid", p.pid, "cmd", sp.path, "user", u.Name, "pty", p.hasPTY())

	t := tuning{readChunk: s.readChunk, bulkWait: s.bulkWait, drainIdle: s.drainIdle, drainMax: s.drainMax}
	go func() {
		defer s.wg.Done()
		p.run(t)
		s.ended(p)
	}()
	return p, sub, nil
}

// ended runs after a process's end event is recorded.
func (s *Service) ended(p *proc) {
	s.mu.Lock()
	delete(s.children, p.pid)
	s.mu.Unlock()
	s.log.Debug("process ended", "pid", p.pid, "state", p.cmd.ProcessState) // formatted only when logged
	if s.retention > 0 {
		p.retainMu.Lock()
		p.retain = time.AfterFunc(s.retention, func() { s.collect(p) })
		p.retainMu.Unlock()
	}
}

// collect removes p from the table (its end was delivered or expired).
func (s *Service) collect(p *proc) {
	p.stopRetention()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs[p.pid] == p {
		delete(s.procs, p.pid)
	}
}

func (p *proc) stopRetention() {
	p.retainMu.Lock()
	defer p.retainMu.Unlock()
	if p.retain != nil {
		p.retain.Stop()
	}
}

// pump streams a process's events to one subscriber: start, replayed
// backlog, live output and keepalives, and finally the end event. Events
// that are ready together leave in one flush (see batchWriter); pump
// flushes before every wait.
func (s *Service) pump(ctx context.Context, p *proc, sub *subscriber, replay []chunk, send func(*pb.ProcessEvent) error) error {
	defer p.hub.unsubscribe(sub)
	batch := batchFrom(ctx)
	batch.hold()
	start := &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(p.pid)}}} //nolint:gosec // pids are positive
	if err := send(start); err != nil {
		return err
	}
	for _, c := range replay {
		if err := send(c.event()); err != nil {
			return err
		}
	}
	output := func(c chunk) error {
		sub.taken(c)
		p.hub.freed()
		// When send returns, connect's codec has copied c's bytes into
		// its own buffer (the handler has no interceptor that could
		// keep the message), so the buffer may go back to the reader.
		err := send(c.event())
		c.release()
		return err
	}
	end := func() error {
		select {
		case <-sub.dropped:
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("process %d: %w", p.pid, sub.err))
		default:
		}
		for {
			select {
			case c := <-sub.ch:
				err := send(c.event())
				c.release()
				if err != nil {
					return err
				}
				continue
			default:
			}
			break
		}
		if err := send(p.hub.endEvent()); err != nil {
			return err
		}
		s.collect(p)
		return nil
	}
	keepalive := time.NewTicker(s.keepalive)
	defer keepalive.Stop()
	for {
		// What is ready now joins the events sent since the last flush.
		select {
		case c := <-sub.ch:
			if err := output(c); err != nil {
				return err
			}
			continue
		case <-p.hub.ended:
			return end()
		default:
		}
		batch.flush()
		select {
		case c := <-sub.ch:
			if err := output(c); err != nil {
				return err
			}
		case <-sub.dropped:
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("process %d: %w", p.pid, sub.err))
		case <-p.hub.ended:
			return end()
		case <-keepalive.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// find resolves a selector to a process that is not collected yet. A tag
// resolves to the running process with that tag, else to an ended one.
func (s *Service) find(sel *pb.ProcessSelector) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p := s.procs[int(v.Pid)]; p != nil {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no process with pid %d", v.Pid))
	case *pb.ProcessSelector_Tag:
		var found *proc
		for _, p := range s.procs {
			if p.tag != nil && *p.tag == v.Tag && (found == nil || !p.isDone()) {
				found = p
			}
		}
		if found != nil {
			return found, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no process with tag %q", v.Tag))
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector (pid or tag) is required"))
}

// reserveTag claims a tag for a process about to start: a tag names at most
// one running process.
func (s *Service) reserveTag(tag *string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return connect.NewError(connect.CodeUnavailable, errors.New("process service is shutting down"))
	}
	if tag == nil {
		return nil
	}
	if _, ok := s.tags[*tag]; ok {
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("a process with tag %q is already starting", *tag))
	}
	for _, p := range s.procs {
		if p.tag != nil && *p.tag == *tag && !p.isDone() {
			return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("process %d with tag %q is still running", p.pid, *tag))
		}
	}
	s.tags[*tag] = struct{}{}
	return nil
}

func (s *Service) releaseTag(tag *string) {
	if tag == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tags, *tag)
}

// resolveUser returns the user a request names in its Basic authorization
// header, or the default user.
func (s *Service) resolveUser(h http.Header) (*identity.User, error) {
	name, err := identity.UsernameFromHeader(h.Get("Authorization"))
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	u, err := s.defaults.ResolveUser(name)
	if errors.Is(err, identity.ErrUnknownUser) {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("resolve user: %w", err))
	}
	return u, nil
}

// writeInput queues input for p, checking that its kind fits the process.
func writeInput(ctx context.Context, p *proc, in *pb.ProcessInput) error {
	var data []byte
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		if p.hasPTY() {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has a PTY: send pty input, not stdin", p.pid))
		}
		if p.input == nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d was started without stdin", p.pid))
		}
		data = v.Stdin
	case *pb.ProcessInput_Pty:
		if !p.hasPTY() {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no PTY: send stdin input", p.pid))
		}
		data = v.Pty
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("input is empty: set stdin or pty"))
	}
	if err := p.input.write(ctx, data); err != nil {
		return inputError(p, err)
	}
	return nil
}

func inputError(p *proc, err error) error {
	switch {
	case errors.Is(err, errInputClosed):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("stdin of process %d is closed", p.pid))
	case errors.Is(err, errProcessGone):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has exited", p.pid))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("input to process %d: %w", p.pid, err))
}

// childOOMScoreAdj is the OOM score adjustment of every process envd
// starts (inherited by their children): the most preferred victims, so a
// capsule out of memory loses a user process, never envd (whose own
// adjustment, set by the runtime, is lower; capsule root may raise a
// score but not lower it). A process that forks before the raise leaves
// children at envd's score: the window is the time between fork and
// this write, microseconds against the child's own start.
const childOOMScoreAdj = "1000"

// raiseOOMScore sets pid's OOM score adjustment to childOOMScoreAdj (best
// effort: outside a capsule, without /proc or permission, nothing changes).
// Plain system calls: os.WriteFile would also try to add the file to the
// poller and allocate an *os.File, on every exec.
func raiseOOMScore(pid int) {
	var buf [32]byte
	path := append(strconv.AppendInt(append(buf[:0], "/proc/"...), int64(pid), 10), "/oom_score_adj"...)
	fd, err := unix.Open(string(path), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _ = unix.Write(fd, []byte(childOOMScoreAdj))
	_ = unix.Close(fd)
}
