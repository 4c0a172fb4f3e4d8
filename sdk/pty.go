package wrenn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"sync"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// PTYOptions configure an interactive terminal.
type PTYOptions struct {
	// Cols and Rows are the initial size (default 80×24).
	Cols, Rows uint16
	// Cmd is the program to run (default: the capsule's login shell).
	Cmd string
}

// PTY is an interactive terminal in a capsule, over a WebSocket. Read
// returns the terminal's output and io.EOF once the session ended cleanly
// (ExitStatus then tells how the program ended); Write sends keystrokes.
// Read must not be called concurrently with itself; Write, Resize and
// Close may be called from other goroutines.
type PTY struct {
	conn   *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc

	rd      []byte // unread part of the current output message
	mu      sync.Mutex
	pid     uint32
	status  *ExitStatus
	readErr error
}

// ErrDisconnected is returned by PTY.Read when the connection broke
// without a clean close.
var ErrDisconnected = errors.New("wrenn: terminal connection lost")

// OpenPTY starts a program on a new terminal in the capsule. The PTY lives
// until Close, the program's end or ctx's end.
func (c *Client) OpenPTY(ctx context.Context, id string, o PTYOptions) (*PTY, error) {
	q := url.Values{}
	if o.Cols > 0 {
		q.Set("cols", strconv.Itoa(int(o.Cols)))
	}
	if o.Rows > 0 {
		q.Set("rows", strconv.Itoa(int(o.Rows)))
	}
	if o.Cmd != "" {
		q.Set("cmd", o.Cmd)
	}
	pctx, cancel := context.WithCancel(ctx)
	conn, err := c.dial(pctx, "/v1/capsules/"+url.PathEscape(id)+"/pty", q)
	if err != nil {
		cancel()
		return nil, err
	}
	return &PTY{conn: conn, ctx: pctx, cancel: cancel}, nil
}

// Read reads terminal output.
func (p *PTY) Read(b []byte) (int, error) {
	for len(p.rd) == 0 {
		p.mu.Lock()
		err := p.readErr
		p.mu.Unlock()
		if err != nil {
			return 0, err
		}
		typ, msg, err := p.conn.Read(p.ctx)
		if err != nil {
			p.fail(p.classify(err))
			continue
		}
		if typ == websocket.MessageBinary {
			p.rd = msg
			continue
		}
		var ev wsEvent
		if json.Unmarshal(msg, &ev) != nil {
			continue
		}
		p.mu.Lock()
		switch ev.Type {
		case "start":
			p.pid = ev.PID
		case "end":
			p.status = exitStatus(ev)
		case "error":
			p.readErr = &Error{Code: ev.Code, Message: ev.Message}
		}
		p.mu.Unlock()
	}
	n := copy(b, p.rd)
	p.rd = p.rd[n:]
	return n, nil
}

// classify maps a read error: a normal close is io.EOF.
func (p *PTY) classify(err error) error {
	if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
		return io.EOF
	}
	if p.ctx.Err() != nil {
		return p.ctx.Err()
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, err)
}

func (p *PTY) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readErr == nil {
		p.readErr = err
	}
}

// Write sends input (keystrokes) to the terminal.
func (p *PTY) Write(b []byte) (int, error) {
	if err := p.conn.Write(p.ctx, websocket.MessageBinary, b); err != nil {
		return 0, fmt.Errorf("wrenn: terminal input: %w", err)
	}
	return len(b), nil
}

// Resize tells the terminal its new size.
func (p *PTY) Resize(cols, rows uint16) error {
	b, _ := json.Marshal(wrennapi.PtyResize{Type: wrennapi.PtyResizeTypeResize, Cols: uint32(cols), Rows: uint32(rows)})
	if err := p.conn.Write(p.ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("wrenn: terminal resize: %w", err)
	}
	return nil
}

// PID is the program's process ID in the capsule (0 until known).
func (p *PTY) PID() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// ExitStatus is how the program ended, once Read returned io.EOF after the
// program's end; nil before that or when the session ended otherwise.
func (p *PTY) ExitStatus() *ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Close ends the session; the server then kills the program.
func (p *PTY) Close() error {
	if err := p.conn.Close(websocket.StatusNormalClosure, ""); err != nil {
		_ = p.conn.CloseNow()
	}
	p.cancel()
	return nil
}
