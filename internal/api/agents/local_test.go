package agents_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// streamAgent is an agent service whose ExecStream sends the chunks of
// script in order (stdout, stderr), then an end with exit code 3.
type streamAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	script []*pb.ExecStreamResponse
	sent   atomic.Int64
	done   chan error // the handler's result, once it returns
	panicc bool
}

func (s *streamAgent) ExecStream(ctx context.Context, _ *connect.Request[pb.ExecRequest], st *connect.ServerStream[pb.ExecStreamResponse]) (err error) {
	defer func() { s.done <- err }()
	if s.panicc {
		panic("agent bug")
	}
	if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_StartedPid{StartedPid: 42}}); err != nil {
		return err
	}
	for _, m := range s.script {
		if err := st.Send(m); err != nil {
			return err
		}
		s.sent.Add(1)
	}
	return st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End{End: &pb.ProcessEnd{ExitCode: 3, Exited: true}}})
}

func (s *streamAgent) GetHostInfo(context.Context, *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	return nil, connect.NewError(connect.CodeNotFound, errors.New("no such thing"))
}

// localPool returns a pool whose host "local:1" is served in-process by
// agent, behind a check of the host credential.
func localPool(t *testing.T, agent *streamAgent) (*agents.Pool, store.Host) {
	t.Helper()
	p := agents.New(agents.Config{Key: []byte("0123456789abcdef0123456789abcdef")})
	t.Cleanup(p.Close)
	host := store.Host{ID: "host-local", Address: "local:1"}
	want := "Bearer " + p.Credential(host.ID)
	path, h := hostagentv1connect.NewHostAgentServiceHandler(agent)
	mux := http.NewServeMux()
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			http.Error(w, "bad credential", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	p.SetLocal(host.Address, mux)
	return p, host
}

// TestLocalTransportStream: a large stream of mixed stdout and stderr
// chunks through the in-process transport arrives byte for byte, in
// order, followed by the exit code; errors keep their codes.
func TestLocalTransportStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var script []*pb.ExecStreamResponse
	var wantOut, wantErr bytes.Buffer
	var order []bool // true: stdout
	for i := range 200 {
		size := []int{1, 100, 40 << 10, 300 << 10, 1 << 20}[i%5]
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%7 == 3 {
			script = append(script, &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stderr{Stderr: b}})
			wantErr.Write(b)
			order = append(order, false)
			continue
		}
		script = append(script, &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: b}})
		wantOut.Write(b)
		order = append(order, true)
	}
	agent := &streamAgent{script: script, done: make(chan error, 1)}
	p, host := localPool(t, agent)
	ctx := testutil.Context(t, testutil.Long)
	st, err := p.Client(host).ExecStream(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: "cl-x", Cmd: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var gotOut, gotErr bytes.Buffer
	var gotOrder []bool
	var end *pb.ProcessEnd
	first := true
	for st.Receive() {
		m := st.Msg()
		if first && m.GetStartedPid() != 42 {
			t.Fatalf("first message %v; want the start", m)
		}
		first = false
		switch e := m.GetEvent().(type) {
		case *pb.ExecStreamResponse_Stdout:
			gotOut.Write(e.Stdout)
			gotOrder = append(gotOrder, true)
			agents.ReleaseOutput(e.Stdout)
		case *pb.ExecStreamResponse_Stderr:
			gotErr.Write(e.Stderr)
			gotOrder = append(gotOrder, false)
			agents.ReleaseOutput(e.Stderr)
		case *pb.ExecStreamResponse_End:
			if end != nil {
				t.Fatal("two end events")
			}
			end = e.End
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotOut.Bytes(), wantOut.Bytes()) || !bytes.Equal(gotErr.Bytes(), wantErr.Bytes()) {
		t.Fatalf("stdout %d bytes (want %d), stderr %d (want %d), or their bytes differ", gotOut.Len(), wantOut.Len(), gotErr.Len(), wantErr.Len())
	}
	if len(gotOrder) != len(order) {
		t.Fatalf("%d output messages, want %d", len(gotOrder), len(order))
	}
	for i := range order {
		if gotOrder[i] != order[i] {
			t.Fatalf("message %d came on the wrong stream: stdout/stderr order not kept", i)
		}
	}
	if end == nil || end.GetExitCode() != 3 {
		t.Fatalf("end %v; want exit code 3", end)
	}
	if err := <-agent.done; err != nil {
		t.Fatalf("handler: %v", err)
	}

	// Unary errors keep their code; a wrong credential is refused.
	_, err = p.Client(host).GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "no such thing") {
		t.Fatalf("unary error %v; want not_found from the handler", err)
	}
	bad := hostagentv1connect.NewHostAgentServiceClient(&http.Client{Transport: agents.LocalTransport{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "bad credential", http.StatusUnauthorized)
	})}}, "http://local:1")
	if _, err := bad.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("without the credential: %v; want unauthenticated", err)
	}
}

// TestLocalTransportBackpressureAndCancel: a caller that stops reading
// holds the handler after a message (nothing is buffered for it), and a
// caller that goes away ends the handler's context.
func TestLocalTransportBackpressureAndCancel(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	script := make([]*pb.ExecStreamResponse, 10000) // 640 MiB if it were all buffered
	for i := range script {
		script[i] = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: chunk}}
	}
	agent := &streamAgent{script: script, done: make(chan error, 1)}
	p, host := localPool(t, agent)
	ctx, cancel := context.WithCancel(testutil.Context(t, testutil.Long))
	defer cancel()
	st, err := p.Client(host).ExecStream(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: "cl-x", Cmd: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for range 3 {
		if !st.Receive() {
			t.Fatal(st.Err())
		}
	}
	time.Sleep(300 * time.Millisecond) // the handler runs ahead as far as it can
	if n := agent.sent.Load(); n > 4 {
		t.Fatalf("the handler sent %d messages while the caller read 3: output buffered for a slow reader", n)
	}
	cancel()
	select {
	case err := <-agent.done:
		if err == nil {
			t.Fatal("the handler finished the stream after the caller went away")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not released when the caller went away")
	}
}

// TestLocalTransportHandlerPanic: a handler that panics fails that one
// call, like a dropped connection, not the process.
func TestLocalTransportHandlerPanic(t *testing.T) {
	agent := &streamAgent{panicc: true, done: make(chan error, 1)}
	p, host := localPool(t, agent)
	ctx := testutil.Context(t, testutil.Short)
	st, err := p.Client(host).ExecStream(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: "cl-x", Cmd: "x"}))
	if err == nil {
		for st.Receive() {
			t.Fatalf("message %v from a handler that panicked", st.Msg())
		}
		err = st.Err()
		_ = st.Close()
	}
	if err == nil {
		t.Fatal("no error from a handler that panicked")
	}
}

// TestLocalTransportRequestBody: the handler reads the caller's body and
// the body is closed once the handler returns.
func TestLocalTransportRequestBody(t *testing.T) {
	got := make(chan string, 1)
	tr := agents.LocalTransport{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r.Method + " " + r.URL.Path + " " + string(b)
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("ok"))
	})}
	body := &closeCounter{Reader: strings.NewReader("hello")}
	req, _ := http.NewRequestWithContext(testutil.Context(t, testutil.Short), http.MethodPost, "http://local:1/x", body)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || string(b) != "ok" || resp.ContentLength != 2 {
		t.Fatalf("answer %d %q (length %d)", resp.StatusCode, b, resp.ContentLength)
	}
	if g := <-got; g != "POST /x hello" {
		t.Fatalf("handler saw %q", g)
	}
	if body.closed.Load() != 1 {
		t.Fatalf("request body closed %d times; want once", body.closed.Load())
	}
}

type closeCounter struct {
	io.Reader
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }

// TestOutputCodec: the pool's codec decodes what protobuf decodes, output
// chunks into pooled buffers that ReleaseOutput takes back.
func TestOutputCodec(t *testing.T) {
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 100<<10)
	msgs := []proto.Message{
		&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: big}},
		&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stderr{Stderr: big}},
		&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: []byte("small")}},
		&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_StartedPid{StartedPid: 7}},
		&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End{End: &pb.ProcessEnd{ExitCode: 2, Status: "exit status 2"}}},
		&pb.PtyOutput{Event: &pb.PtyOutput_Data{Data: big}},
		&pb.PtyOutput{Event: &pb.PtyOutput_StartedPid{StartedPid: 9}},
	}
	for _, m := range msgs {
		wire, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := m.ProtoReflect().New().Interface()
		// Decode into a message holding something else first: the codec
		// must not leave old fields behind.
		if _, ok := got.(*pb.ExecStreamResponse); ok {
			got = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_StartedPid{StartedPid: 1}}
		}
		if err := agents.DecodeForTest(wire, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, m) {
			t.Fatalf("decoded %T differs from the message sent", m)
		}
	}
	agents.ReleaseOutput(nil)             // not from the pool: ignored
	agents.ReleaseOutput(make([]byte, 5)) // likewise
}
