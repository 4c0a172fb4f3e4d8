package envdclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// ExecResult is the outcome of Exec.
type ExecResult struct {
	PID      uint32
	ExitCode int32
	Stdout   []byte
	Stderr   []byte
	// Error is set when the process did not exit normally (signal, timeout).
	Error string
	// Truncated reports that output beyond the limit was dropped.
	Truncated bool
}

// ExecOptions tunes Exec.
type ExecOptions struct {
	// Stdin is written to the process, whose stdin is then closed. nil
	// starts the process without a stdin pipe.
	Stdin []byte
	// Timeout kills the process (SIGKILL) after this long; 0 = only ctx.
	Timeout time.Duration
	// Limit caps stdout+stderr kept (default 16 MiB); the rest is dropped.
	Limit int
}

// DefaultExecLimit caps the output Exec keeps.
const DefaultExecLimit = 16 << 20

// Exec runs proc to completion and collects its output. When ctx ends or
// the timeout passes first, the process is killed and Exec returns the
// output so far with an error.
func (c *Client) Exec(ctx context.Context, proc *pb.ProcessConfig, opt ExecOptions) (ExecResult, error) {
	if opt.Limit <= 0 {
		opt.Limit = DefaultExecLimit
	}
	var res ExecResult
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The timeout cancels the stream from a timer rather than as a context
	// deadline: a deadline would travel to envd, which could end the stream
	// first, and the kill below must know that the timeout fired.
	var timedOut atomic.Bool
	if opt.Timeout > 0 {
		t := time.AfterFunc(opt.Timeout, func() { timedOut.Store(true); cancel() })
		defer t.Stop()
	}
	withStdin := opt.Stdin != nil
	stream, err := c.Process.Start(sctx, connect.NewRequest(&pb.StartRequest{Process: proc, Stdin: &withStdin}))
	if err != nil {
		return res, err
	}
	defer func() { _ = stream.Close() }()
	var stdout, stderr bytes.Buffer
	keep := func(dst *bytes.Buffer, p []byte) {
		room := opt.Limit - stdout.Len() - stderr.Len()
		if len(p) > room {
			p = p[:max(room, 0)]
			res.Truncated = true
		}
		dst.Write(p)
	}
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch e := ev.GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			res.PID = e.Start.GetPid()
			if withStdin {
				if err := c.writeStdin(sctx, res.PID, opt.Stdin); err != nil {
					return res, err
				}
			}
		case *pb.ProcessEvent_Data:
			switch d := e.Data.GetOutput().(type) {
			case *pb.ProcessEvent_DataEvent_Stdout:
				keep(&stdout, d.Stdout)
			case *pb.ProcessEvent_DataEvent_Stderr:
				keep(&stderr, d.Stderr)
			case *pb.ProcessEvent_DataEvent_Pty:
				keep(&stdout, d.Pty)
			}
		case *pb.ProcessEvent_End:
			res.ExitCode = e.End.GetExitCode()
			res.Error = e.End.GetError()
			if !e.End.GetExited() && res.Error == "" {
				res.Error = e.End.GetStatus()
			}
			res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
			return res, nil
		}
	}
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	serr := stream.Err()
	if res.PID != 0 && sctx.Err() != nil {
		// The caller gave up or the timeout passed: do not leave it running.
		kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = c.Signal(kctx, res.PID, pb.Signal_SIGNAL_SIGKILL)
		kcancel()
		if ctx.Err() == nil && timedOut.Load() {
			res.Error = fmt.Sprintf("timed out after %v", opt.Timeout)
			res.ExitCode = -1
			return res, ErrExecTimeout
		}
	}
	if serr == nil {
		serr = errors.New("process stream ended without an end event")
	}
	return res, fmt.Errorf("exec %s: %w", proc.GetCmd(), serr)
}

// ErrExecTimeout is returned by Exec when its timeout killed the process.
var ErrExecTimeout = errors.New("exec timed out")

func (c *Client) writeStdin(ctx context.Context, pid uint32, data []byte) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		_, err := c.Process.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
			Process: sel,
			Input:   &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data[:n]}},
		}))
		if err != nil {
			return fmt.Errorf("write stdin: %w", err)
		}
		data = data[n:]
	}
	if _, err := c.Process.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		return fmt.Errorf("close stdin: %w", err)
	}
	return nil
}

// Signal sends sig to the process with pid.
func (c *Client) Signal(ctx context.Context, pid uint32, sig pb.Signal) error {
	_, err := c.Process.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}},
		Signal:  sig,
	}))
	return err
}
