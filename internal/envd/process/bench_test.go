package process

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// percentile returns the p-th percentile (0..1) of sorted durations in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(float64(len(sorted))*p), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// BenchmarkExecRoundTrip starts `true` through the connect client over
// loopback and waits for its end event, interleaved with os/exec running the
// same binary in the same loop as the baseline. It reports the latencies,
// their ratio and the CPU time this process spent per exec on either side.
func BenchmarkExecRoundTrip(b *testing.B) {
	h := newHarness(b)
	ctx := context.Background()
	path, err := exec.LookPath("true")
	if err != nil {
		b.Fatal(err)
	}
	// Warm the connection and the page cache.
	for range 5 {
		if _, err := h.run(b, connect.NewRequest(startReq("true"))); err != nil {
			b.Fatal(err)
		}
	}
	var rpc, base []time.Duration
	var rpcCPU, baseCPU time.Duration
	for b.Loop() {
		cpu0 := cpuTime()
		began := time.Now()
		stream, err := h.client.Start(ctx, connect.NewRequest(startReq("true")))
		if err != nil {
			b.Fatal(err)
		}
		r, err := drain(stream)
		if err != nil || r.end.GetExitCode() != 0 {
			b.Fatalf("true: %v %v", r.end, err)
		}
		rpc = append(rpc, time.Since(began))
		_ = stream.Close()
		cpu1 := cpuTime()
		rpcCPU += cpu1 - cpu0

		began = time.Now()
		if err := exec.Command(path).Run(); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(began))
		baseCPU += cpuTime() - cpu1
	}
	slices.Sort(rpc)
	slices.Sort(base)
	b.ReportMetric(percentile(rpc, 0.50), "p50_ms")
	b.ReportMetric(percentile(rpc, 0.99), "p99_ms")
	b.ReportMetric(percentile(base, 0.50), "baseline_p50_ms")
	b.ReportMetric(percentile(base, 0.99), "baseline_p99_ms")
	b.ReportMetric(percentile(rpc, 0.50)/percentile(base, 0.50), "ratio_p50")
	// CPU this process (envd and the client; the child's own CPU is not
	// counted) spent per exec: steadier than latency on a shared machine.
	b.ReportMetric(float64(rpcCPU.Microseconds())/float64(b.N), "rpc_cpu_us")
	b.ReportMetric(float64(baseCPU.Microseconds())/float64(b.N), "baseline_cpu_us")
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// tcpCopy copies size bytes over a loopback TCP connection and returns how
// long it took. The receiver reads in 1 MiB buffers.
func tcpCopy(b *testing.B, size int64) time.Duration {
	b.Helper()
	return tcpSend(b, size, func(c net.Conn) (int64, error) {
		return io.CopyN(c, zeros{}, size)
	})
}

// tcpStdoutCopy is the like-for-like baseline of a stdout stream: the same
// command writes size bytes into a pipe sized as envd sizes it, and a plain
// loop reads the pipe in 1 MiB reads (as envd does) and writes them to a
// loopback TCP connection. It is what streaming the output costs with no
// RPC at all: the producer and the pipe are part of it.
func tcpStdoutCopy(b *testing.B, size int64) time.Duration {
	b.Helper()
	return tcpSend(b, size, func(c net.Conn) (int64, error) {
		pr, pw, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		defer func() { _ = pr.Close() }()
		if _, err := unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, stdoutPipeSize); err != nil {
			_ = pw.Close()
			return 0, err
		}
		cmd := exec.Command("head", "-c", strconv.FormatInt(size, 10), "/dev/zero")
		cmd.Stdout = pw
		err = cmd.Start()
		_ = pw.Close()
		if err != nil {
			return 0, err
		}
		// The wrappers hide ReadFrom/WriteTo: a plain loop of 1 MiB reads.
		n, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{pr}, make([]byte, 1<<20))
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return n, err
		}
		return n, cmd.Wait()
	})
}

// tcpSend runs send against the client end of a fresh loopback TCP
// connection whose server end is read to EOF in 1 MiB reads, and returns
// the time from dial to the last byte read.
func tcpSend(b *testing.B, size int64, send func(net.Conn) (int64, error)) time.Duration {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, make([]byte, 1<<20))
		_ = c.Close()
		got <- n
	}()
	began := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if n, err := send(c); err != nil || n != size {
		b.Fatalf("tcp send: %d bytes, %v; want %d", n, err, size)
	}
	_ = c.Close()
	if n := <-got; n != size {
		b.Fatalf("tcp copy moved %d bytes, want %d", n, size)
	}
	return time.Since(began)
}

// BenchmarkStdoutStream streams 1 GiB (64 MiB with -short) of a process's
// stdout through the RPC to the product's client, envdclient (HTTP/1.1, the
// host agent's streaming transport, no gzip, output in a reused buffer as
// the agent's forwarding streams receive it), next to a plain loopback TCP
// copy of the same size in the same run.
func BenchmarkStdoutStream(b *testing.B) {
	h := newHarness(b)
	c, err := envdclient.New(envdclient.Config{Addr: strings.TrimPrefix(h.srv.URL, "http://")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.CloseIdleConnections)
	benchStdout(b, c.OneStream())
}

// BenchmarkStdoutStreamH2C is BenchmarkStdoutStream through connect-go's
// default client over HTTP/2 cleartext, as clients written for E2B's envd
// may connect. The client does not accept gzip: connect offers it by
// default and it would turn the zeros into a compression benchmark.
func BenchmarkStdoutStreamH2C(b *testing.B) {
	h := newHarness(b)
	client, tr := h.newClient(connect.WithAcceptCompression("gzip", nil, nil))
	b.Cleanup(tr.CloseIdleConnections)
	benchStdout(b, client)
}

// benchStdout streams `head -c 1G /dev/zero` through client, then, in the
// same iteration, copies as much over loopback TCP twice: from memory
// (ratio) and from the same command's stdout through a pipe with no RPC
// (ratio_stdout, the like-for-like baseline: on this machine the producer
// and the pipe alone keep a stream well under the memory copy). It reports
// the rates, both ratios, the average message size and the CPU time this
// process (envd and client) spent.
func benchStdout(b *testing.B, client processconnect.ProcessClient) {
	b.Helper()
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	ctx := context.Background()
	var rpcTime, tcpTime, stdoutTime, rpcCPU, tcpCPU time.Duration
	var msgs int
	b.SetBytes(size)
	for b.Loop() {
		cpu0 := cpuTime()
		began := time.Now()
		stream, err := client.Start(ctx, connect.NewRequest(startReq("head", "-c", strconv.FormatInt(size, 10), "/dev/zero")))
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		var exit int32 = -1
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			msgs++
			n += int64(len(ev.GetData().GetStdout()))
			if end := ev.GetEnd(); end != nil {
				exit = end.GetExitCode()
			}
		}
		if err := stream.Err(); err != nil || n != size || exit != 0 {
			b.Fatalf("streamed %d bytes, exit %d, err %v; want %d bytes", n, exit, err, size)
		}
		_ = stream.Close()
		rpcTime += time.Since(began)
		cpu1 := cpuTime()
		tcpTime += tcpCopy(b, size)
		rpcCPU += cpu1 - cpu0
		tcpCPU += cpuTime() - cpu1
		stdoutTime += tcpStdoutCopy(b, size)
	}
	total := float64(size) * float64(b.N) / 1e6
	rpcMBps := total / rpcTime.Seconds()
	tcpMBps := total / tcpTime.Seconds()
	b.ReportMetric(rpcMBps, "rpc_MB/s")
	b.ReportMetric(tcpMBps, "tcp_MB/s")
	stdoutMBps := total / stdoutTime.Seconds()
	b.ReportMetric(stdoutMBps, "tcp_stdout_MB/s")
	b.ReportMetric(rpcMBps/tcpMBps, "ratio")
	b.ReportMetric(rpcMBps/stdoutMBps, "ratio_stdout")
	b.ReportMetric(float64(size)*float64(b.N)/float64(msgs)/1024, "KiB/msg")
	// CPU seconds this process (envd side and client side) spent per GiB:
	// steadier than wall-clock rates on a shared machine.
	gib := float64(size) * float64(b.N) / (1 << 30)
	b.ReportMetric(rpcCPU.Seconds()/gib, "rpc_cpu_s/GiB")
	b.ReportMetric(tcpCPU.Seconds()/gib, "tcp_cpu_s/GiB")
}

// cpuTime returns the user+system CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
