package envdclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/envd"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startEnvd serves a real envd on loopback and returns its address.
func startEnvd(t *testing.T) string {
	t.Helper()
	srv, err := envd.New(envd.Config{
		Logger:   slog.New(slog.DiscardHandler),
		RunDir:   t.TempDir(),
		SetClock: func(time.Time) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("envd serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ln.Addr().String()
}

func newClient(t *testing.T, addr string) *envdclient.Client {
	t.Helper()
	c, err := envdclient.New(envdclient.Config{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestHealthVersionMetrics(t *testing.T) {
	c := newClient(t, startEnvd(t))
	ctx := testutil.Context(t, testutil.Short)
	if err := c.WaitHealthy(ctx, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Version == "" {
		t.Errorf("version: got empty, want envd's version")
	}
	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.MemTotal == 0 || m.MemUsed == 0 || m.MemUsed > m.MemTotal || m.CPUCount == 0 || m.DiskTotal == 0 {
		t.Errorf("metrics implausible: %+v", m)
	}
}

func TestWaitHealthyTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	c := newClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.WaitHealthy(ctx, 10*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("WaitHealthy took %v after a 200 ms deadline", d)
	}
}

func TestInitSetsTokenAndPrepare(t *testing.T) {
	addr := startEnvd(t)
	c := newClient(t, addr)
	ctx := testutil.Context(t, testutil.Short)
	err := c.Init(ctx, envdclient.InitRequest{
		CapsuleID: "cl-test", TemplateID: "minimal", EnvVars: map[string]string{"FOO": "bar"},
		Timestamp: time.Now(), AccessToken: "secret-token",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.AccessToken(); got != "secret-token" {
		t.Fatalf("token after init: got %q, want secret-token", got)
	}
	// The client sends the token; a client without it is refused.
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health with token: %v", err)
	}
	bare := newClient(t, addr)
	if err := bare.Health(ctx); !envdclient.IsStatus(err, http.StatusUnauthorized) {
		t.Fatalf("health without token: got %v, want 401", err)
	}
	c.CloseIdleConnections()
	if err := c.PrepareSnapshot(ctx); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	// /init after a prepare re-enables everything and still answers 204.
	if err := c.Init(ctx, envdclient.InitRequest{CapsuleID: "cl-test", TemplateID: "minimal", Timestamp: time.Now(), AccessToken: "secret-token"}); err != nil {
		t.Fatalf("init after prepare: %v", err)
	}
	// Bad input is a typed 400.
	err = c.Init(ctx, envdclient.InitRequest{CapsuleID: "bad id!", Timestamp: time.Now()})
	if !envdclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("init with a bad id: got %v, want 400", err)
	}
}

func TestUploadDownloadStreaming(t *testing.T) {
	testutil.RequireRoot(t)
	c := newClient(t, startEnvd(t))
	ctx := testutil.Context(t, testutil.Long)
	size := 64 << 20
	if testing.Short() {
		size = 4 << 20
	}
	data := make([]byte, size)
	_, _ = rand.Read(data)
	dir := t.TempDir()
	target := filepath.Join(dir, "sub", "big.bin")
	entries, err := c.Upload(ctx, target, "", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Path != target {
		t.Fatalf("upload entries: got %+v, want one entry for %s", entries, target)
	}
	body, n, err := c.Download(ctx, target, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	_ = body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(size) || !bytes.Equal(got, data) {
		t.Fatalf("download: got %d bytes (header %d), want the %d uploaded", len(got), n, size)
	}
	if _, _, err := c.Download(ctx, filepath.Join(dir, "missing"), ""); !envdclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("download of a missing file: got %v, want 404", err)
	}
}

func TestProcessAndFilesystem(t *testing.T) {
	testutil.RequireRoot(t)
	c := newClient(t, startEnvd(t))
	ctx := testutil.Context(t, testutil.Long)
	tests := []struct {
		name       string
		cmd        string
		args       []string
		stdin      []byte
		wantOut    string
		wantErrOut string
		wantCode   int32
	}{
		{name: "echo", cmd: "/bin/echo", args: []string{"hello"}, wantOut: "hello\n"},
		{name: "stderr and code", cmd: "/bin/sh", args: []string{"-c", "echo oops >&2; exit 3"}, wantErrOut: "oops\n", wantCode: 3},
		{name: "stdin", cmd: "/bin/cat", stdin: []byte("from stdin"), wantOut: "from stdin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Exec(ctx, &procpb.ProcessConfig{Cmd: tt.cmd, Args: tt.args}, envdclient.ExecOptions{Stdin: tt.stdin})
			if err != nil {
				t.Fatal(err)
			}
			if string(res.Stdout) != tt.wantOut || string(res.Stderr) != tt.wantErrOut || res.ExitCode != tt.wantCode {
				t.Errorf("got out=%q err=%q code=%d, want %q %q %d", res.Stdout, res.Stderr, res.ExitCode, tt.wantOut, tt.wantErrOut, tt.wantCode)
			}
		})
	}
	t.Run("timeout kills", func(t *testing.T) {
		start := time.Now()
		res, err := c.Exec(ctx, &procpb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}, envdclient.ExecOptions{Timeout: 300 * time.Millisecond})
		if !errors.Is(err, envdclient.ErrExecTimeout) {
			t.Fatalf("got %v, want ErrExecTimeout", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("timeout took %v", time.Since(start))
		}
		testutil.Eventually(t, testutil.Short, func() bool {
			return !processAlive(int(res.PID))
		}, "the timed-out process is still alive")
	})
	t.Run("limit truncates", func(t *testing.T) {
		res, err := c.Exec(ctx, &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "head -c 100000 /dev/zero"}}, envdclient.ExecOptions{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Stdout) != 1000 || !res.Truncated {
			t.Errorf("got %d bytes truncated=%v, want 1000 and true", len(res.Stdout), res.Truncated)
		}
	})
	t.Run("filesystem as user", func(t *testing.T) {
		dir := t.TempDir()
		uctx := envdclient.WithUser(ctx, "root")
		if _, err := c.Filesystem.MakeDir(uctx, connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(dir, "a", "b")})); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "a", "f.txt"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := c.Filesystem.ListDir(uctx, connect.NewRequest(&fspb.ListDirRequest{Path: filepath.Join(dir, "a"), Depth: 1}))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range res.Msg.GetEntries() {
			names = append(names, e.GetName())
		}
		if got := strings.Join(names, ","); got != "b,f.txt" && got != "f.txt,b" {
			t.Errorf("list: got %q, want b and f.txt", got)
		}
		_, err = c.Filesystem.ListDir(envdclient.WithUser(ctx, "no-such-user-xyz"), connect.NewRequest(&fspb.ListDirRequest{Path: dir}))
		if err == nil {
			t.Errorf("list as an unknown user: got no error, want one (user header not sent?)")
		}
	})
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// A zombie (state Z) is dead for our purposes.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

func TestConnectCallsRefuseGzip(t *testing.T) {
	// envd is a TAP or veth away: compressing process output would only
	// burn the capsule's CPU, so the client must not offer gzip.
	got := make(chan http.Header, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		http.Error(w, "recorded", http.StatusTeapot)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, strings.TrimPrefix(srv.URL, "http://"))
	ctx := testutil.Context(t, testutil.Short)

	stream, err := c.Process.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "true"}}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
		_ = stream.Close()
	}
	if err == nil {
		t.Fatal("start against a recording server succeeded")
	}
	_, err = c.Filesystem.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/"}))
	if err == nil {
		t.Fatal("stat against a recording server succeeded")
	}
	for _, call := range []string{"process start", "filesystem stat"} {
		h := <-got
		for _, name := range []string{"Connect-Accept-Encoding", "Accept-Encoding", "Grpc-Accept-Encoding"} {
			if v := h.Get(name); strings.Contains(v, "gzip") {
				t.Errorf("%s: %s: %q offers gzip", call, name, v)
			}
		}
	}
}

// TestOneStreamOutput streams a few MiB of distinct lines through a
// OneStream client from a real envd: copied before each next Receive,
// the output is exactly what the process printed.
func TestOneStreamOutput(t *testing.T) {
	c := newClient(t, startEnvd(t))
	ctx := testutil.Context(t, testutil.Short)
	if err := c.WaitHealthy(ctx, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	const n = 400000
	var want bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	st, err := c.OneStream().Start(ctx, connect.NewRequest(&procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "sh", Args: []string{"-c", fmt.Sprintf("seq 1 %d; seq 1 3 >&2", n)}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	var stdout, stderr bytes.Buffer
	var exit int32 = -1
	for st.Receive() {
		ev := st.Msg().GetEvent()
		stdout.Write(ev.GetData().GetStdout())
		stderr.Write(ev.GetData().GetStderr())
		if e := ev.GetEnd(); e != nil {
			exit = e.GetExitCode()
		}
	}
	if err := st.Err(); err != nil || exit != 0 {
		t.Fatalf("stream: %v, exit %d", err, exit)
	}
	if !bytes.Equal(stdout.Bytes(), want.Bytes()) {
		t.Errorf("stdout: %d bytes, want %d (equal: false)", stdout.Len(), want.Len())
	}
	if stderr.String() != "1\n2\n3\n" {
		t.Errorf("stderr = %q", stderr.String())
	}
}
