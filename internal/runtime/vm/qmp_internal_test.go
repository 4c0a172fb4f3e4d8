package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fakeQEMU serves one QMP connection: a greeting, then for each command
// an event followed by the reply script gives (nil: {"return": {}}).
func fakeQEMU(t *testing.T, script func(cmd string, args json.RawMessage, fds []int) any) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		w := bufio.NewWriter(c)
		_, _ = w.WriteString(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n")
		_ = w.Flush()
		buf := make([]byte, 4096)
		oob := make([]byte, 128)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var fds []int
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if f, err := syscall.ParseUnixRights(&m); err == nil {
						fds = append(fds, f...)
					}
				}
			}
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
			}
			if err := json.Unmarshal(buf[:n], &req); err != nil {
				return
			}
			_, _ = w.WriteString(`{"event": "SOMETHING", "data": {}}` + "\n")
			reply := script(req.Execute, req.Arguments, fds)
			if reply == nil {
				reply = map[string]any{"return": map[string]any{}}
			}
			b, _ := json.Marshal(reply)
			_, _ = w.Write(append(b, '\n'))
			_ = w.Flush()
		}
	}()
	return sock
}

func TestQMPClient(t *testing.T) {
	var gotFD bool
	sock := fakeQEMU(t, func(cmd string, args json.RawMessage, fds []int) any {
		switch cmd {
		case "query-status":
			return map[string]any{"return": map[string]any{"status": "running", "running": true}}
		case "balloon":
			var a struct{ Value int64 }
			_ = json.Unmarshal(args, &a)
			if a.Value != 123 {
				return map[string]any{"error": map[string]any{"class": "GenericError", "desc": "bad value"}}
			}
		case "getfd":
			gotFD = len(fds) == 1
			for _, fd := range fds {
				syscall.Close(fd)
			}
		case "hang":
			time.Sleep(3 * time.Second)
		case "fail":
			return map[string]any{"error": map[string]any{"class": "DeviceNotFound", "desc": "no such device"}}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer q.Close()
	var st struct{ Status string }
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %v %+v", err, st)
	}
	if err := q.Execute(ctx, "balloon", map[string]any{"value": 123}, nil); err != nil {
		t.Errorf("balloon: %v", err)
	}
	var qe *QMPError
	if err := q.Execute(ctx, "fail", nil, nil); !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Command != "fail" {
		t.Errorf("fail: err = %v, want a QMPError of class DeviceNotFound", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "fd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "x"}, f); err != nil || !gotFD {
		t.Errorf("getfd: %v, descriptor received: %v", err, gotFD)
	}
	// A command whose context ends returns at once and closes the
	// connection (a late reply must not answer the next command).
	hctx, hcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer hcancel()
	t0 := time.Now()
	if err := q.Execute(hctx, "hang", nil, nil); err == nil || time.Since(t0) > 2*time.Second {
		t.Errorf("hang: err = %v after %v", err, time.Since(t0))
	}
	if err := q.Execute(ctx, "query-status", nil, nil); err == nil {
		t.Errorf("command after a cancelled one succeeded on a closed connection")
	}
}

func TestQMPDialNoGreeting(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = c.Write([]byte("{\"return\": {}}\n"))
			time.Sleep(time.Second)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, sock); err == nil {
		t.Fatal("dial succeeded without a QMP greeting")
	}
}
