package process

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness is a Service behind a real HTTP/2 cleartext server, driven by a
// real connect client over loopback.
type harness struct {
	svc      *Service
	defaults *defaults.Defaults
	srv      *httptest.Server
	client   processconnect.ProcessClient
	tr       *http.Transport
}

func newHarness(t testing.TB, tune ...func(*Service)) *harness {
	t.Helper()
	d := defaults.New("")
	svc := NewService(slog.New(slog.DiscardHandler), d)
	for _, f := range tune {
		f(svc)
	}
	mux := http.NewServeMux()
	mux.Handle(svc.Handler())
	srv := httptest.NewUnstartedServer(mux)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protocols
	srv.Start()
	h := &harness{svc: svc, defaults: d, srv: srv}
	h.client, h.tr = h.newClient()
	t.Cleanup(func() {
		svc.Close()
		h.tr.CloseIdleConnections()
		srv.Close()
	})
	return h
}

// newClient returns a client on its own HTTP/2 connection.
func (h *harness) newClient(opts ...connect.ClientOption) (processconnect.ProcessClient, *http.Transport) {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	return processconnect.NewProcessClient(&http.Client{Transport: tr}, h.srv.URL, opts...), tr
}

// newStallingClient returns a client on its own HTTP/2 connection with the
// smallest receive windows and without gzip, so that when the test stops
// reading a stream the server soon cannot send more (Go's default windows
// would otherwise absorb MiBs in the client, and gzip shrinks zeros 1000x).
func (h *harness) newStallingClient(t testing.TB) processconnect.ProcessClient {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols, HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerConnection: 64 << 10,
		MaxReceiveBufferPerStream:     64 << 10,
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return processconnect.NewProcessClient(&http.Client{Transport: tr}, h.srv.URL, connect.WithAcceptCompression("gzip", nil, nil))
}

// result is everything one stream delivered.
type result struct {
	pid        uint32
	events     int
	stdout     bytes.Buffer
	stderr     bytes.Buffer
	pty        bytes.Buffer
	end        *pb.ProcessEvent_EndEvent
	keepalives int
}

// add records one event; it reports whether it was the end event.
func (r *result) add(ev *pb.ProcessEvent) bool {
	r.events++
	switch e := ev.GetEvent().(type) {
	case *pb.ProcessEvent_Start:
		r.pid = e.Start.GetPid()
	case *pb.ProcessEvent_Data:
		r.stdout.Write(e.Data.GetStdout())
		r.stderr.Write(e.Data.GetStderr())
		r.pty.Write(e.Data.GetPty())
	case *pb.ProcessEvent_End:
		r.end = e.End
		return true
	case *pb.ProcessEvent_Keepalive:
		r.keepalives++
	}
	return false
}

type eventMsg interface{ GetEvent() *pb.ProcessEvent }

type eventStream[T eventMsg] interface {
	Receive() bool
	Msg() T
	Err() error
}

// drain reads a stream to its end.
func drain[T eventMsg](s eventStream[T]) (*result, error) {
	r := &result{}
	for s.Receive() {
		if r.add(s.Msg().GetEvent()) {
			return r, nil
		}
	}
	if err := s.Err(); err != nil {
		return r, err
	}
	return r, errors.New("stream ended without an end event")
}

// until reads a stream until cond holds for the result so far.
func until[T eventMsg](t testing.TB, s eventStream[T], r *result, cond func(*result) bool) {
	t.Helper()
	for !cond(r) {
		if !s.Receive() {
			t.Fatalf("stream ended before condition (err %v; stdout %q stderr %q pty %q)", s.Err(), r.stdout.String(), r.stderr.String(), r.pty.String())
		}
		if r.add(s.Msg().GetEvent()) && !cond(r) {
			t.Fatalf("process ended before condition: %v (stdout %q pty %q)", r.end, r.stdout.String(), r.pty.String())
		}
	}
}

func startReq(cmd string, args ...string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: cmd, Args: args}}
}

// asUser sets the Basic authorization header E2B clients send.
func asUser[T any](req *connect.Request[T], user string) *connect.Request[T] {
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	return req
}

// run starts a process and reads its stream to the end.
func (h *harness) run(t testing.TB, req *connect.Request[pb.StartRequest]) (*result, error) {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	stream, err := h.client.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = stream.Close() }()
	return drain(stream)
}

// mustRun is run that fails the test on an RPC error.
func (h *harness) mustRun(t testing.TB, req *pb.StartRequest) *result {
	t.Helper()
	r, err := h.run(t, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("run %s %v: %v", req.GetProcess().GetCmd(), req.GetProcess().GetArgs(), err)
	}
	return r
}

// started opens a Start stream and reads up to its start event.
func (h *harness) started(ctx context.Context, t testing.TB, client processconnect.ProcessClient, req *connect.Request[pb.StartRequest]) (*connect.ServerStreamForClient[pb.StartResponse], *result) {
	t.Helper()
	stream, err := client.Start(ctx, req)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = stream.Close() })
	r := &result{}
	until(t, stream, r, func(r *result) bool { return r.pid != 0 })
	return stream, r
}

// connected opens a Connect stream and reads up to its start event.
func connected(ctx context.Context, t testing.TB, client processconnect.ProcessClient, sel *pb.ProcessSelector) (*connect.ServerStreamForClient[pb.ConnectResponse], *result) {
	t.Helper()
	stream, err := client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: sel}))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = stream.Close() })
	r := &result{}
	until(t, stream, r, func(r *result) bool { return r.pid != 0 })
	return stream, r
}

func byPID(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

func byTag(tag string) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
}

func stdinInput(s string) *pb.ProcessInput {
	return &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(s)}}
}

func ptyInput(s string) *pb.ProcessInput {
	return &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(s)}}
}

func (h *harness) send(t testing.TB, sel *pb.ProcessSelector, in *pb.ProcessInput) {
	t.Helper()
	_, err := h.client.SendInput(testutil.Context(t, testutil.Short), connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: in}))
	if err != nil {
		t.Fatalf("send input: %v", err)
	}
}

// wantCode checks that err is a connect error with the given code and a
// message containing want.
func wantCode(t testing.TB, err error, code connect.Code, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("got code %v (%v), want %v", got, err, code)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not mention %q", err.Error(), want)
	}
}

// fast shortens the service's timers for tests.
func fast(s *Service) {
	s.keepalive = time.Minute
	s.drainIdle = 100 * time.Millisecond
	s.drainMax = 2 * time.Second
}
