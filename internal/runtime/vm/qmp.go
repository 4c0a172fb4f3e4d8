package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// QMPError is an error QEMU returned for a command ({"error": {...}}).
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

// qmpClient is a small typed client of QEMU's machine protocol over its
// unix socket: one command at a time, each bounded by its caller's
// context (no client-wide timeout). Asynchronous events are read and
// dropped (the driver polls query-* commands instead). A command whose
// context ends closes the connection: QEMU may still answer it, and a
// later reply must never be taken for another command's.
type qmpClient struct {
	conn *net.UnixConn
	mu   sync.Mutex // one command in flight
	rd   *bufio.Reader
}

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	QMP    json.RawMessage `json:"QMP"`
}

// dialQMP connects to the socket, reads the greeting and leaves
// capability negotiation mode.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	q := &qmpClient{conn: c.(*net.UnixConn), rd: bufio.NewReaderSize(c, 64<<10)}
	stop := context.AfterFunc(ctx, func() { _ = q.conn.Close() })
	defer stop()
	m, err := q.read()
	if err != nil {
		q.conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", errors.Join(err, ctx.Err()))
	}
	if m.QMP == nil {
		q.conn.Close()
		return nil, errors.New("qmp: no greeting")
	}
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpClient) read() (qmpMessage, error) {
	for {
		line, err := q.rd.ReadBytes('\n')
		if err != nil {
			return qmpMessage{}, err
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return qmpMessage{}, fmt.Errorf("qmp: bad message %q: %w", line, err)
		}
		if m.Event != "" {
			continue
		}
		return m, nil
	}
}

// Execute runs cmd with args (nil: none) and decodes its return value
// into out (nil: ignored).
func (q *qmpClient) Execute(ctx context.Context, cmd string, args, out any) error {
	return q.execute(ctx, cmd, args, out, nil)
}

// ExecuteWithFile runs cmd passing f's descriptor along (SCM_RIGHTS), as
// getfd and add-fd want.
func (q *qmpClient) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File) error {
	return q.execute(ctx, cmd, args, nil, f)
}

func (q *qmpClient) execute(ctx context.Context, cmd string, args, out any, f *os.File) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = q.conn.Close() })
	defer stop()
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	if _, _, err := q.conn.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, ctx.Err()))
	}
	m, err := q.read()
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, ctx.Err()))
	}
	if m.Error != nil {
		m.Error.Command = cmd
		return m.Error
	}
	if out != nil && m.Return != nil {
		if err := json.Unmarshal(m.Return, out); err != nil {
			return fmt.Errorf("qmp %s: decode: %w", cmd, err)
		}
	}
	return nil
}

// Close closes the connection.
func (q *qmpClient) Close() error { return q.conn.Close() }
