package wrenn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// ExecRequest is a command to run in a capsule.
type ExecRequest struct {
	// Cmd is the program (looked up in PATH). Required.
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
	User string            `json:"user,omitempty"`
	// Timeout kills the command when it runs longer (0: the server's).
	Timeout time.Duration `json:"-"`
	// Stdin is fed to the command (unary Exec only).
	Stdin string `json:"stdin,omitempty"`
}

func (r ExecRequest) body() wrennapi.Exec {
	return wrennapi.Exec{
		Cmd: r.Cmd, Args: r.Args, Env: r.Env, Cwd: r.Cwd, User: r.User, Stdin: r.Stdin,
		TimeoutSec: timeoutSec(r.Timeout),
	}
}

// ExecResult is a finished command's output. Error says why the command
// did not run or was killed, if it was; Truncated is set when the output
// was larger than the server keeps.
type ExecResult = wrennapi.ExecResult

// Exec runs a command to completion and returns its buffered output. For
// large or long-running output use ExecStream.
func (c *Client) Exec(ctx context.Context, id string, r ExecRequest) (*ExecResult, error) {
	var out ExecResult
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/exec", nil, r.body(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ExitStatus is how a streamed process ended.
type ExitStatus struct {
	ExitCode int
	// Exited is false when the process was killed by a signal.
	Exited bool
	// Status is the runtime's description, e.g. "exit status 1".
	Status string
	// Message explains a failure to run, if any.
	Message string
}

// wsEvent is one JSON message on exec and process streams; DataB64
// carries binary output (not valid UTF-8).
type wsEvent = wrennapi.ExecEvent

// ErrStreamClosed is returned when a stream ends without the process's
// exit status (the server or the network went away).
var ErrStreamClosed = errors.New("wrenn: stream closed before the process ended")

// dial opens a WebSocket to path.
func (c *Client) dial(ctx context.Context, path string, q url.Values) (*websocket.Conn, error) {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path = u.Path + path
	u.RawQuery = q.Encode()
	h := http.Header{}
	c.authorize(h)
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil {
			defer resp.Body.Close()
			return nil, decodeError(resp)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.wrapTransport(err)
	}
	conn.SetReadLimit(8 << 20)
	return conn, nil
}

// ExecStream runs a command and copies its output to stdout and stderr
// (either may be nil) as it is produced, then returns its exit status.
// Cancelling ctx stops the command.
func (c *Client) ExecStream(ctx context.Context, id string, r ExecRequest, stdout, stderr io.Writer) (*ExitStatus, error) {
	conn, err := c.dial(ctx, "/v1/capsules/"+url.PathEscape(id)+"/exec/stream", binaryFrames)
	if err != nil {
		return nil, err
	}
	defer conn.CloseNow()
	b, err := json.Marshal(r.body())
	if err != nil {
		return nil, fmt.Errorf("wrenn: encode request: %w", err)
	}
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		return nil, fmt.Errorf("wrenn: exec stream: %w", err)
	}
	return pumpEvents(ctx, conn, stdout, stderr)
}

// binaryFrames asks the server for output as binary messages (one byte
// naming the stream, 1 stdout or 2 stderr, then the raw bytes) instead of
// JSON events; a server that does not know the parameter sends JSON
// events, which pumpEvents reads too.
var binaryFrames = url.Values{"frames": {"binary"}}

// Stream bytes of a binary output message.
const (
	frameStdout = 1
	frameStderr = 2
)

// pumpEvents reads events until the end event: output as binary messages
// or as JSON events, the rest as JSON events.
func pumpEvents(ctx context.Context, conn *websocket.Conn, stdout, stderr io.Writer) (*ExitStatus, error) {
	buf := make([]byte, 64<<10)
	for {
		typ, r, err := conn.Reader(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrStreamClosed, err)
		}
		if typ == websocket.MessageBinary {
			if err := copyOutput(r, buf, stdout, stderr); err != nil {
				return nil, err
			}
			continue
		}
		msg, err := io.ReadAll(r)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrStreamClosed, err)
		}
		var ev wsEvent
		if err := json.Unmarshal(msg, &ev); err != nil {
			return nil, fmt.Errorf("wrenn: bad stream event: %w", err)
		}
		switch ev.Type {
		case "stdout", "stderr":
			w := stdout
			if ev.Type == "stderr" {
				w = stderr
			}
			if w == nil {
				continue
			}
			data, err := eventBytes(&ev)
			if err != nil {
				return nil, err
			}
			if _, err := w.Write(data); err != nil {
				return nil, err
			}
		case "end":
			conn.Close(websocket.StatusNormalClosure, "")
			return exitStatus(ev), nil
		case "error":
			return nil, &Error{Code: ev.Code, Message: ev.Message}
		}
	}
}

// copyOutput copies one binary output message to stdout or stderr
// (dropped when that writer is nil) through buf.
func copyOutput(r io.Reader, buf []byte, stdout, stderr io.Writer) error {
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return fmt.Errorf("%w: %w", ErrStreamClosed, err)
	}
	var w io.Writer
	switch buf[0] {
	case frameStdout:
		w = stdout
	case frameStderr:
		w = stderr
	default:
		return fmt.Errorf("wrenn: bad stream frame (stream byte %d)", buf[0])
	}
	if w == nil {
		w = io.Discard
	}
	// io.CopyBuffer would use w's ReadFrom (a bytes.Buffer's grows by
	// reading into its own spare room); plain reads into buf are fine.
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrStreamClosed, err)
		}
	}
}

func exitStatus(ev wsEvent) *ExitStatus {
	st := &ExitStatus{Exited: ev.Exited, Status: ev.Status, Message: ev.Message}
	if ev.ExitCode != nil {
		st.ExitCode = int(*ev.ExitCode)
	}
	return st
}

// ProcessRequest starts a background process.
type ProcessRequest struct {
	ExecRequest
	// Tag names the process so it can be found again.
	Tag string `json:"tag,omitempty"`
	// OpenStdin keeps the process's stdin open for input.
	OpenStdin bool `json:"open_stdin,omitempty"`
}

// Process is a background process in a capsule.
type Process = wrennapi.Process

// StartProcess starts a background process and returns its PID.
func (c *Client) StartProcess(ctx context.Context, id string, r ProcessRequest) (uint32, error) {
	e := r.body()
	body := wrennapi.StartProcess{
		Cmd: e.Cmd, Args: e.Args, Env: e.Env, Cwd: e.Cwd, User: e.User, Stdin: e.Stdin, TimeoutSec: e.TimeoutSec,
		Tag: r.Tag, OpenStdin: r.OpenStdin,
	}
	var out wrennapi.ProcessStarted
	if err := c.call(ctx, http.MethodPost, "/v1/capsules/"+url.PathEscape(id)+"/processes", nil, body, &out); err != nil {
		return 0, err
	}
	return out.PID, nil
}

// Processes lists a capsule's processes.
func (c *Client) Processes(ctx context.Context, id string) ([]Process, error) {
	var out wrennapi.ProcessList
	if err := c.call(ctx, http.MethodGet, "/v1/capsules/"+url.PathEscape(id)+"/processes", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Processes, nil
}

// KillProcess signals a process: "SIGKILL" (or "") or "SIGTERM".
func (c *Client) KillProcess(ctx context.Context, id string, pid uint32, signal string) error {
	q := url.Values{}
	if signal != "" {
		q.Set("signal", signal)
	}
	return c.call(ctx, http.MethodDelete, "/v1/capsules/"+url.PathEscape(id)+"/processes/"+strconv.FormatUint(uint64(pid), 10), q, nil, nil)
}

// AttachProcess follows a background process's output until it exits (or
// ctx ends) and returns its exit status.
func (c *Client) AttachProcess(ctx context.Context, id string, pid uint32, stdout, stderr io.Writer) (*ExitStatus, error) {
	conn, err := c.dial(ctx, "/v1/capsules/"+url.PathEscape(id)+"/processes/"+strconv.FormatUint(uint64(pid), 10)+"/stream", binaryFrames)
	if err != nil {
		return nil, err
	}
	defer conn.CloseNow()
	return pumpEvents(ctx, conn, stdout, stderr)
}

// bytes returns the event's output, decoding binary (base64) chunks.
func eventBytes(ev *wsEvent) ([]byte, error) {
	if ev.DataB64 == "" {
		return []byte(ev.Data), nil
	}
	b, err := base64.StdEncoding.DecodeString(ev.DataB64)
	if err != nil {
		return nil, fmt.Errorf("wrenn: bad binary output in stream: %w", err)
	}
	return b, nil
}
