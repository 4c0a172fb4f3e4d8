package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// PTY input handling: WebSocket reads go into a buffered channel so a slow
// RPC never stalls the socket, and the dispatcher coalesces whatever input
// queued up into one PtyInput call.
const (
	ptyQueue        = 1024
	ptyCoalesceMax  = 64 << 10
	wsReadLimit     = 1 << 20
	wsWriteDeadline = 30 * time.Second
)

// wsEvent is one JSON message on exec and process streams (ExecEvent in
// openapi.yaml). DataB64 carries output that is not valid UTF-8 (binary),
// base64 encoded, instead of Data, so that no byte is ever replaced.
type wsEvent = wrennapi.ExecEvent

// outputEvent wraps a chunk of process output: as text when it is valid
// UTF-8, base64 in data_b64 otherwise.
func outputEvent(typ wrennapi.ExecEventType, b []byte) wsEvent {
	if utf8.Valid(b) {
		return wsEvent{Type: typ, Data: string(b)}
	}
	return wsEvent{Type: typ, DataB64: base64.StdEncoding.EncodeToString(b)}
}

func (a *API) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: a.cfg.WSOriginPatterns})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(wsReadLimit)
	return c, nil
}

// Binary output frames (issue 21): a client that opens exec/stream or
// processes/{pid}/stream with the query parameter frames=binary gets each
// output chunk as a binary message — one byte naming the stream
// (frameStdout, frameStderr) followed by the raw bytes — instead of a
// JSON event; start, end and error stay JSON text messages. Without the
// parameter (older clients) every event is JSON as before.
const (
	frameStdout = 1
	frameStderr = 2
)

// binaryFrames reports whether the client asked for binary output frames.
func binaryFrames(r *http.Request) bool { return r.URL.Query().Get("frames") == "binary" }

// writeOutput sends one chunk of output as a binary frame: the stream
// byte, then the data, written through the message writer (no copy).
func writeOutput(ctx context.Context, c *websocket.Conn, stream byte, b []byte) error {
	wctx, cancel := context.WithTimeout(ctx, wsWriteDeadline)
	defer cancel()
	w, err := c.Writer(wctx, websocket.MessageBinary)
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte{stream}); err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Close()
}

func writeEvent(ctx context.Context, c *websocket.Conn, ev wsEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, wsWriteDeadline)
	defer cancel()
	return c.Write(wctx, websocket.MessageText, b)
}

// wsFail reports an error on an open socket and closes it.
func (a *API) wsFail(ctx context.Context, c *websocket.Conn, err error) {
	e := toAPIError(err)
	msg := e.Message
	if e.Code == CodeInternal {
		a.log.ErrorContext(ctx, "internal error", "request_id", requestID(ctx), "err", err)
		msg = "internal error (request id " + requestID(ctx) + ")"
	}
	_ = writeEvent(ctx, c, wsEvent{Type: "error", Code: e.Code, Message: msg})
	_ = c.Close(websocket.StatusPolicyViolation, e.Code)
}

func endEvent(e *pb.ProcessEnd) wsEvent {
	code := e.GetExitCode()
	return wsEvent{Type: "end", ExitCode: &code, Exited: e.GetExited(), Status: e.GetStatus(), Message: e.GetError()}
}

// wsExec runs a command given in the first message and streams its output.
func (a *API) wsExec(w http.ResponseWriter, r *http.Request) {
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	conn, err := a.accept(w, r)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	typ, msg, err := conn.Read(ctx)
	if err != nil {
		return
	}
	var req wrennapi.Exec
	dec := json.NewDecoder(bytesReader(msg))
	dec.DisallowUnknownFields()
	if typ != websocket.MessageText || dec.Decode(&req) != nil {
		a.wsFail(ctx, conn, errorf(CodeInvalidArgument, "the first message must be a JSON exec request {cmd, args, env, cwd, timeout_sec}"))
		return
	}
	if err := execRequest(req).Validate(); err != nil {
		a.wsFail(ctx, conn, err)
		return
	}
	// Notice the client going away: reads fail when the socket closes.
	go func() {
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				cancel()
				return
			}
		}
	}()
	stream, err := cl.ExecStream(ctx, connect.NewRequest(execRequest(req).Proto(c.ID)))
	if err != nil {
		a.wsFail(ctx, conn, agentError(err))
		return
	}
	defer stream.Close()
	a.pumpProcess(ctx, conn, binaryFrames(r), stream.Receive, stream.Msg, stream.Err)
}

// pumpProcess forwards exec/process stream events to the socket: output
// as binary frames when binary, as JSON events otherwise.
func (a *API) pumpProcess(ctx context.Context, conn *websocket.Conn, binary bool, recv func() bool, msg func() *pb.ExecStreamResponse, errf func() error) {
	for recv() {
		m := msg()
		var ev wsEvent
		switch e := m.GetEvent().(type) {
		case *pb.ExecStreamResponse_StartedPid:
			ev = wsEvent{Type: "start", PID: e.StartedPid}
		case *pb.ExecStreamResponse_Stdout:
			if binary {
				err := writeOutput(ctx, conn, frameStdout, e.Stdout)
				agents.ReleaseOutput(e.Stdout) // written (or failed): not referenced any more
				if err != nil {
					return
				}
				continue
			}
			ev = outputEvent("stdout", e.Stdout)
			agents.ReleaseOutput(e.Stdout) // the event holds a string or base64 copy
		case *pb.ExecStreamResponse_Stderr:
			if binary {
				err := writeOutput(ctx, conn, frameStderr, e.Stderr)
				agents.ReleaseOutput(e.Stderr)
				if err != nil {
					return
				}
				continue
			}
			ev = outputEvent("stderr", e.Stderr)
			agents.ReleaseOutput(e.Stderr)
		case *pb.ExecStreamResponse_End:
			if err := writeEvent(ctx, conn, endEvent(e.End)); err == nil {
				_ = conn.Close(websocket.StatusNormalClosure, "process exited")
			}
			return
		default:
			continue
		}
		if err := writeEvent(ctx, conn, ev); err != nil {
			return
		}
	}
	if err := errf(); err != nil && ctx.Err() == nil {
		a.wsFail(ctx, conn, agentError(err))
		return
	}
	_ = conn.Close(websocket.StatusNormalClosure, "stream ended")
}

// wsProcess attaches to a background process: output as JSON events;
// client messages {"type":"stdin","data":…} and {"type":"close_stdin"}.
func (a *API) wsProcess(w http.ResponseWriter, r *http.Request) {
	pid, err := pidParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	conn, err := a.accept(w, r)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	stream, err := cl.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{CapsuleId: c.ID, Process: sel}))
	if err != nil {
		a.wsFail(ctx, conn, agentError(err))
		return
	}
	defer stream.Close()
	go func() {
		defer cancel()
		for {
			typ, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			var in wrennapi.StdinMessage
			if typ != websocket.MessageText || json.Unmarshal(b, &in) != nil {
				continue
			}
			req := &pb.SendProcessInputRequest{CapsuleId: c.ID, Process: sel, Data: []byte(in.Data), CloseStdin: in.Type == "close_stdin"}
			if in.Type != "stdin" && in.Type != "close_stdin" {
				continue
			}
			_, err = cl.SendProcessInput(ctx, connect.NewRequest(req))
			switch {
			case err == nil:
			case connect.CodeOf(err) == connect.CodeNotFound:
				// The process exited meanwhile: its end event (with the
				// exit status) follows on the stream; input has nowhere to go.
			default:
				_ = writeEvent(ctx, conn, wsEvent{Type: "error", Code: agentError(err).Code, Message: agentError(err).Message})
			}
		}
	}()
	a.pumpProcess(ctx, conn, binaryFrames(r), stream.Receive, stream.Msg, stream.Err)
}

func (a *API) wsPTY(w http.ResponseWriter, r *http.Request) {
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.servePTY(w, r, c, cl)
}

// wsAdminPTY opens a terminal in any team's capsule (platform admins).
func (a *API) wsAdminPTY(w http.ResponseWriter, r *http.Request) {
	conn, err := a.capsules.Connect(r.Context(), adminScope(r), chiParam(r, "capsuleID"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.servePTY(w, r, conn.Capsule, conn.Agent)
}

type ptyItem struct {
	data       []byte
	cols, rows uint32
}

// servePTY bridges a WebSocket and a PTY process. Binary messages from the
// client are keystrokes; text messages are JSON controls
// {"type":"resize","cols":…,"rows":…}. Output goes out as binary
// messages; the process end as a text {"type":"end",…} followed by a
// normal close. Query: cols, rows, cmd, pid (attach instead of start),
// grace (seconds the shell outlives a client that went away; default 0:
// a started shell is killed at once, an attached one left running).
func (a *API) servePTY(w http.ResponseWriter, r *http.Request, c store.Capsule, cl hostagentv1connect.HostAgentServiceClient) {
	q := r.URL.Query()
	dim := func(name string, def uint32) (uint32, error) {
		s := q.Get(name)
		if s == "" {
			return def, nil
		}
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 || n > 1000 {
			return 0, errorf(CodeInvalidArgument, "%s must be an integer from 1 to 1000", name)
		}
		return uint32(n), nil
	}
	cols, err := dim("cols", 80)
	if err == nil {
		var rows uint32
		rows, err = dim("rows", 24)
		if err == nil {
			var attach uint64
			if s := q.Get("pid"); s != "" {
				attach, err = strconv.ParseUint(s, 10, 32)
				if err != nil || attach == 0 {
					err = errorf(CodeInvalidArgument, "pid must be a positive integer")
				}
			}
			var grace time.Duration
			if err == nil {
				grace, err = ptyGrace(q.Get("grace"))
			}
			if err == nil {
				a.runPTY(w, r, c, cl, cols, rows, uint32(attach), grace)
				return
			}
		}
	}
	a.writeError(w, r, err)
}

// ptyGrace parses ?grace= (whole seconds, 0 to MaxPTYGrace).
func ptyGrace(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || time.Duration(n)*time.Second > MaxPTYGrace {
		return 0, errorf(CodeInvalidArgument, "grace must be a number of seconds from 0 to %d", int(MaxPTYGrace/time.Second))
	}
	return time.Duration(n) * time.Second, nil
}

func (a *API) runPTY(w http.ResponseWriter, r *http.Request, c store.Capsule, cl hostagentv1connect.HostAgentServiceClient, cols, rows, attach uint32, grace time.Duration) {
	if attach != 0 {
		// Someone is back: the shell's delayed kill (if any) is off.
		a.reaper.cancel(ptyKey(c.ID, attach))
	}
	conn, err := a.accept(w, r)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	var stream *connect.ServerStreamForClient[pb.PtyOutput]
	if attach != 0 {
		stream, err = cl.PtyAttach(ctx, connect.NewRequest(&pb.PtyAttachRequest{CapsuleId: c.ID, Pid: attach}))
	} else {
		stream, err = cl.PtyStart(ctx, connect.NewRequest(&pb.PtyStartRequest{
			CapsuleId: c.ID, Cmd: r.URL.Query().Get("cmd"), Cols: cols, Rows: rows,
			Env: map[string]string{"TERM": "xterm-256color"},
		}))
	}
	if err != nil {
		a.wsFail(ctx, conn, agentError(err))
		return
	}
	defer stream.Close()

	pidc := make(chan uint32, 1)
	if attach != 0 {
		pidc <- attach
	}
	inputs := make(chan ptyItem, ptyQueue)

	// Reader: socket → channel. Never blocks on RPCs.
	go func() {
		defer close(inputs)
		for {
			typ, b, err := conn.Read(ctx)
			if err != nil {
				cancel()
				return
			}
			item := ptyItem{data: b}
			if typ == websocket.MessageText {
				var ctl wrennapi.PtyResize
				if json.Unmarshal(b, &ctl) != nil || ctl.Type != "resize" || ctl.Cols == 0 || ctl.Rows == 0 || ctl.Cols > 1000 || ctl.Rows > 1000 {
					continue
				}
				item = ptyItem{cols: ctl.Cols, rows: ctl.Rows}
			}
			select {
			case inputs <- item:
			case <-ctx.Done():
				return
			}
		}
	}()

	// Dispatcher: channel → RPCs, coalescing queued keystrokes.
	dispatchDone := make(chan struct{})
	go func() {
		defer close(dispatchDone)
		var pid uint32
		select {
		case pid = <-pidc:
		case <-ctx.Done():
			return
		}
		var pending *ptyItem
		for {
			var it ptyItem
			if pending != nil {
				it, pending = *pending, nil
			} else {
				var ok bool
				if it, ok = <-inputs; !ok {
					return
				}
			}
			if it.cols != 0 {
				if _, err := cl.PtyResize(ctx, connect.NewRequest(&pb.PtyResizeRequest{CapsuleId: c.ID, Pid: pid, Cols: it.cols, Rows: it.rows})); err != nil && ctx.Err() == nil {
					a.log.DebugContext(ctx, "pty resize failed", "capsule_id", c.ID, "err", err)
				}
				continue
			}
			buf := it.data
		coalesce:
			for len(buf) < ptyCoalesceMax {
				select {
				case next, ok := <-inputs:
					if !ok {
						break coalesce
					}
					if next.cols != 0 {
						pending = &next
						break coalesce
					}
					buf = append(buf, next.data...)
				default:
					break coalesce
				}
			}
			if _, err := cl.PtyInput(ctx, connect.NewRequest(&pb.PtyInputRequest{CapsuleId: c.ID, Pid: pid, Data: buf})); err != nil {
				if ctx.Err() == nil {
					a.log.DebugContext(ctx, "pty input failed", "capsule_id", c.ID, "err", err)
				}
				return
			}
		}
	}()

	// Output: RPC stream → socket.
	var pid uint32
	ended := false
	for !ended && stream.Receive() {
		switch e := stream.Msg().GetEvent().(type) {
		case *pb.PtyOutput_StartedPid:
			pid = e.StartedPid
			select {
			case pidc <- pid:
			default:
			}
			if writeEvent(ctx, conn, wsEvent{Type: "start", PID: pid}) != nil {
				ended = true
			}
		case *pb.PtyOutput_Data:
			wctx, wcancel := context.WithTimeout(ctx, wsWriteDeadline)
			err := conn.Write(wctx, websocket.MessageBinary, e.Data)
			wcancel()
			agents.ReleaseOutput(e.Data)
			if err != nil {
				ended = true
			}
		case *pb.PtyOutput_End:
			if writeEvent(ctx, conn, endEvent(e.End)) == nil {
				_ = conn.Close(websocket.StatusNormalClosure, "process exited")
			}
			cancel()
			<-dispatchDone
			return
		}
	}
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		a.wsFail(ctx, conn, agentError(err))
	}
	cancel()
	<-dispatchDone
	// The client went away: do not leave an orphan shell behind, at once
	// or, with ?grace=, once no one re-attached within it.
	if pid == 0 {
		pid = attach
	}
	kill := func() {
		kctx, kcancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
		defer kcancel()
		if _, err := cl.PtyKill(kctx, connect.NewRequest(&pb.PtyKillRequest{CapsuleId: c.ID, Pid: pid})); err != nil && !errors.Is(err, context.Canceled) && connect.CodeOf(err) != connect.CodeNotFound {
			a.log.DebugContext(kctx, "pty kill failed", "capsule_id", c.ID, "pid", pid, "err", err)
		}
	}
	switch {
	case pid == 0:
	case grace > 0:
		a.reaper.schedule(ptyKey(c.ID, pid), grace, kill)
	case attach == 0:
		kill()
	}
}
