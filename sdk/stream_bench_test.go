package wrenn_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

const streamBenchBytes = 128 << 20

func streamBenchCmd(n int) string {
	return fmt.Sprintf("yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c %d", n)
}

// BenchmarkExecStream: a capsule's stdout streamed through the API to the
// SDK (binary frames), the same through the JSON events an older client
// gets, yes | head's stdout copied over loopback TCP on the host (the
// baseline of `wrenn bench`) and the capsule's producer into a pipe inside
// the capsule (its floor: one vCPU), MiB/s, same run.
func BenchmarkExecStream(b *testing.B) {
	ctx := context.Background()
	c := client(&testing.T{})
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Delete(ctx, capsule.ID) //nolint:errcheck // best effort
	// The producer: a 1 MiB text file written out 128 times by cat (in
	// the minimal template, busybox's yes | head manages ≈ 230 MiB/s on
	// one vCPU and would be what is measured).
	seed := wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", streamBenchCmd(1<<20) + " > /tmp/stream.txt"}}
	if _, err := c.Exec(ctx, capsule.ID, seed); err != nil {
		b.Fatal(err)
	}
	producer := fmt.Sprintf("i=0; while [ $i -lt %d ]; do cat /tmp/stream.txt; i=$((i+1)); done", streamBenchBytes>>20)
	req := wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", producer}}
	// The floor inside the capsule: the producer into a pipe read by cat.
	floor := wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", producer + " | cat > /dev/null"}}
	var tBin, tJSON, tBase, tFloor time.Duration
	for b.Loop() {
		var cw countW
		t0 := time.Now()
		if _, err := c.ExecStream(ctx, capsule.ID, req, &cw, io.Discard); err != nil || cw.n != streamBenchBytes {
			b.Fatalf("binary: %d bytes, %v", cw.n, err)
		}
		tBin += time.Since(t0)
		t0 = time.Now()
		if n := jsonStream(b, capsule.ID, req); n != streamBenchBytes {
			b.Fatalf("json: %d bytes", n)
		}
		tJSON += time.Since(t0)
		t0 = time.Now()
		pipeTCP(b, streamBenchBytes)
		tBase += time.Since(t0)
		t0 = time.Now()
		if _, err := c.Exec(ctx, capsule.ID, floor); err != nil {
			b.Fatal(err)
		}
		tFloor += time.Since(t0)
	}
	rate := func(d time.Duration) float64 {
		return float64(streamBenchBytes) * float64(b.N) / (1 << 20) / d.Seconds()
	}
	b.ReportMetric(rate(tBin), "binary_MiB/s")
	b.ReportMetric(rate(tJSON), "json_MiB/s")
	b.ReportMetric(rate(tBase), "pipe_tcp_MiB/s")
	b.ReportMetric(rate(tFloor), "capsule_pipe_MiB/s")
	b.ReportMetric(rate(tBin)/rate(tBase), "binary/pipe_tcp")
}

type countW struct{ n int }

func (w *countW) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// jsonStream runs req on exec/stream as an older client (JSON events) and
// returns the stdout bytes received.
func jsonStream(b *testing.B, id string, req wrenn.ExecRequest) int {
	ctx := context.Background()
	u := strings.Replace(wrennURL, "http", "ws", 1) + "/v1/capsules/" + id + "/exec/stream"
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {wrennKey}}})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(8 << 20)
	body, _ := json.Marshal(wrennapi.Exec{Cmd: req.Cmd, Args: req.Args})
	if err := conn.Write(ctx, websocket.MessageText, body); err != nil {
		b.Fatal(err)
	}
	n := 0
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var ev wrennapi.ExecEvent
		if err := json.Unmarshal(msg, &ev); err != nil {
			b.Fatal(err)
		}
		switch ev.Type {
		case "stdout":
			n += len(ev.Data)
		case "end":
			return n
		}
	}
}

// pipeTCP copies the command's stdout over a loopback TCP connection.
func pipeTCP(b *testing.B, n int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- -1
			return
		}
		defer c.Close()
		m, _ := io.Copy(io.Discard, c)
		done <- m
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", streamBenchCmd(n))
	cmd.Stdout = conn
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	conn.Close()
	if m := <-done; m != int64(n) {
		b.Fatalf("pipe copy: %d of %d bytes", m, n)
	}
}
