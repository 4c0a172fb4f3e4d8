package hostagent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

var capsuleSeq int

func newID() string {
	capsuleSeq++
	return fmt.Sprintf("cl-test%d-%d", time.Now().UnixNano()%1000000, capsuleSeq)
}

func create(t *testing.T, c hostagentv1connect.HostAgentServiceClient, req *pb.CreateCapsuleRequest) *pb.Capsule {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	if req.CapsuleId == "" {
		req.CapsuleId = newID()
	}
	res, err := c.CreateCapsule(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("CreateCapsule: %v", err)
	}
	return res.Msg.GetCapsule()
}

func execOK(t *testing.T, c hostagentv1connect.HostAgentServiceClient, id, cmd string, args ...string) string {
	t.Helper()
	ctx := testutil.Context(t, testutil.Short)
	res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: cmd, Args: args}))
	if err != nil {
		t.Fatalf("Exec %s %v: %v", cmd, args, err)
	}
	if res.Msg.GetExitCode() != 0 {
		t.Fatalf("Exec %s %v: exit %d, stderr %q", cmd, args, res.Msg.GetExitCode(), res.Msg.GetStderr())
	}
	return string(res.Msg.GetStdout())
}

func TestLifecycle(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)

	start := time.Now()
	cap1 := create(t, c, &pb.CreateCapsuleRequest{Env: map[string]string{"GREETING": "hi there"}, TimeoutSec: 600})
	if got := execOK(t, c, cap1.GetCapsuleId(), "/bin/echo", "hello"); got != "hello\n" {
		t.Fatalf("echo: got %q", got)
	}
	t.Logf("create → first exec completed: %v", time.Since(start))
	id := cap1.GetCapsuleId()
	if cap1.GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING || cap1.GetIp() == "" || cap1.GetTemplate() != tmplName || cap1.GetExpiresAt() == 0 {
		t.Errorf("created capsule: %+v", cap1)
	}
	if got := execOK(t, c, id, "/bin/sh", "-c", "echo $GREETING; cat /run/wrenn/.WRENN_TEMPLATE_ID; echo; hostname"); got != "hi there\n"+tmplName+"\n"+id+"\n" {
		t.Errorf("env/identity inside: got %q", got)
	}

	t.Run("exec details", func(t *testing.T) {
		res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{
			CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", "cat; echo err >&2; pwd; exit 7"},
			Cwd: "/tmp", Stdin: []byte("in:"), Env: map[string]string{"X": "1"},
		}))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(res.Msg.GetStdout()), "in:/tmp\n"; got != want || res.Msg.GetExitCode() != 7 || string(res.Msg.GetStderr()) != "err\n" {
			t.Errorf("got out %q err %q code %d, want %q err\\n 7", got, res.Msg.GetStderr(), res.Msg.GetExitCode(), want)
		}
		res, err = c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sleep", Args: []string{"30"}, TimeoutSec: 1}))
		if err != nil {
			t.Fatal(err)
		}
		if res.Msg.GetError() == "" || res.Msg.GetExitCode() != -1 {
			t.Errorf("timeout: got %+v, want an error and exit -1", res.Msg)
		}
	})

	t.Run("duplicate id", func(t *testing.T) {
		_, err := c.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id}))
		if connect.CodeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("create with a live id: got %v, want AlreadyExists", err)
		}
	})

	t.Run("exec stream caller gone kills", func(t *testing.T) {
		sctx, cancel := context.WithCancel(ctx)
		st, err := c.ExecStream(sctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sleep", Args: []string{"300"}}))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Receive() || st.Msg().GetStartedPid() == 0 {
			t.Fatalf("no start event: %v", st.Err())
		}
		pid := st.Msg().GetStartedPid()
		if res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("test -d /proc/%d", pid)}})); err != nil || res.Msg.GetExitCode() != 0 {
			t.Fatalf("pid %d not visible in the capsule while streaming: %v %v", pid, res, err)
		}
		cancel()
		_ = st.Close()
		// envd keeps an ended process listed for a while; ask the kernel.
		testutil.Eventually(t, testutil.Short, func() bool {
			res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("test -d /proc/%d", pid)}}))
			return err == nil && res.Msg.GetExitCode() == 1
		}, "an exec whose stream caller went away is still running")
	})

	t.Run("exec stream", func(t *testing.T) {
		st, err := c.ExecStream(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", "echo a; sleep 0.2; echo b >&2; exit 2"}}))
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut string
		var end *pb.ProcessEnd
		pid := uint32(0)
		for st.Receive() {
			switch e := st.Msg().GetEvent().(type) {
			case *pb.ExecStreamResponse_StartedPid:
				pid = e.StartedPid
			case *pb.ExecStreamResponse_Stdout:
				out += string(e.Stdout)
			case *pb.ExecStreamResponse_Stderr:
				errOut += string(e.Stderr)
			case *pb.ExecStreamResponse_End:
				end = e.End
			}
		}
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		if pid == 0 || out != "a\n" || errOut != "b\n" || end == nil || end.GetExitCode() != 2 {
			t.Errorf("got pid %d out %q err %q end %+v", pid, out, errOut, end)
		}
	})

	t.Run("exec stream bulk output", func(t *testing.T) {
		// Several MiB of distinct lines on both streams through the agent's
		// forwarding (which receives into one reused buffer): every byte
		// arrives, in order.
		n := 300000
		if testing.Short() {
			n = 50000
		}
		var want, wantErr strings.Builder
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&want, "%d\n", i)
		}
		for i := 1; i <= n/10; i++ {
			fmt.Fprintf(&wantErr, "%d\n", i)
		}
		st, err := c.ExecStream(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("seq 1 %d >&2 & seq 1 %d; wait", n/10, n)}}))
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		var end *pb.ProcessEnd
		for st.Receive() {
			switch e := st.Msg().GetEvent().(type) {
			case *pb.ExecStreamResponse_Stdout:
				out.Write(e.Stdout)
			case *pb.ExecStreamResponse_Stderr:
				errOut.Write(e.Stderr)
			case *pb.ExecStreamResponse_End:
				end = e.End
			}
		}
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		if end.GetExitCode() != 0 || out.String() != want.String() || errOut.String() != wantErr.String() {
			t.Errorf("end %+v; stdout %d bytes (want %d, equal %v); stderr %d bytes (want %d, equal %v)", end,
				out.Len(), want.Len(), out.String() == want.String(), errOut.Len(), wantErr.Len(), errOut.String() == wantErr.String())
		}
	})

	t.Run("files", func(t *testing.T) {
		wr, err := c.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{CapsuleId: id, Path: "/home/data/note.txt", Content: []byte("note body")}))
		if err != nil {
			t.Fatal(err)
		}
		// The answer carries the written file's real metadata.
		if e := wr.Msg.GetEntry(); e.GetSize() != int64(len("note body")) || e.GetMode() == 0 || e.GetOwner() == "" || e.GetType() != "file" {
			t.Errorf("WriteFile entry: %+v, want size 9, a mode and an owner", e)
		}
		res, err := c.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{CapsuleId: id, Path: "/home/data/note.txt"}))
		if err != nil {
			t.Fatal(err)
		}
		if got := string(res.Msg.GetContent()); got != "note body" {
			t.Errorf("read back: got %q", got)
		}
		if got := execOK(t, c, id, "/bin/cat", "/home/data/note.txt"); got != "note body" {
			t.Errorf("cat inside: got %q", got)
		}
		// Streams, in chunks, several MiB.
		size := 8 << 20
		if testing.Short() {
			size = 1 << 20
		}
		data := make([]byte, size)
		_, _ = rand.Read(data)
		ws := c.WriteFileStream(ctx)
		if err := ws.Send(&pb.WriteFileStreamRequest{Msg: &pb.WriteFileStreamRequest_Header{Header: &pb.WriteFileHeader{CapsuleId: id, Path: "/home/data/big.bin"}}}); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += 100000 {
			if err := ws.Send(&pb.WriteFileStreamRequest{Msg: &pb.WriteFileStreamRequest_Data{Data: data[off:min(off+100000, len(data))]}}); err != nil {
				t.Fatal(err)
			}
		}
		wsr, err := ws.CloseAndReceive()
		if err != nil {
			t.Fatalf("WriteFileStream: %v", err)
		}
		if e := wsr.Msg.GetEntry(); e.GetSize() != int64(size) || e.GetMode() == 0 || e.GetOwner() == "" {
			t.Errorf("WriteFileStream entry: %+v, want size %d, a mode and an owner", e, size)
		}
		rs, err := c.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileRequest{CapsuleId: id, Path: "/home/data/big.bin"}))
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		chunks := 0
		for rs.Receive() {
			got.Write(rs.Msg().GetData())
			chunks++
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), data) || chunks < 2 {
			t.Errorf("stream round trip: %d bytes in %d chunks, want %d identical bytes in several chunks", got.Len(), chunks, len(data))
		}

		md, err := c.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{CapsuleId: id, Path: "/home/data/sub/deeper"}))
		if err != nil || !md.Msg.GetCreated() || md.Msg.GetEntry().GetType() != "dir" {
			t.Fatalf("MakeDir: %+v %v", md, err)
		}
		md, err = c.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{CapsuleId: id, Path: "/home/data/sub/deeper"}))
		if err != nil || md.Msg.GetCreated() {
			t.Fatalf("MakeDir again: %+v %v (want created=false)", md, err)
		}
		ls, err := c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{CapsuleId: id, Path: "/home/data"}))
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]string{}
		for _, e := range ls.Msg.GetEntries() {
			names[e.GetName()] = e.GetType()
		}
		want := map[string]string{"note.txt": "file", "big.bin": "file", "sub": "dir"}
		for n, typ := range want {
			if names[n] != typ {
				t.Errorf("ListDir: %s: got type %q, want %q (all: %v)", n, names[n], typ, names)
			}
		}
		if _, err := c.RemovePath(ctx, connect.NewRequest(&pb.RemovePathRequest{CapsuleId: id, Path: "/home/data/sub"})); err != nil {
			t.Fatal(err)
		}
		_, err = c.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{CapsuleId: id, Path: "/home/data/sub/deeper"}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("read of a removed path: got %v, want NotFound", err)
		}
	})

	t.Run("metrics sampled", func(t *testing.T) {
		testutil.Eventually(t, testutil.Short, func() bool {
			res, err := c.GetCapsuleMetrics(ctx, connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: id}))
			if err != nil || len(res.Msg.GetPoints()) < 2 {
				return false
			}
			p := res.Msg.GetPoints()[len(res.Msg.GetPoints())-1]
			return p.GetMemTotalBytes() > 0 && p.GetMemUsedBytes() > 0 && res.Msg.GetResolutionSec() == 1
		}, "no guest metrics sampled")
	})

	// Pause: the sampler stops, data calls are refused, state says paused.
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("PauseCapsule: %v", err)
	}
	if hostagent.SamplerRunning(h.agent, id) {
		t.Error("metrics sampler still running after pause")
	}
	_, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/true"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("exec on a paused capsule: got %v, want FailedPrecondition", err)
	}
	ping, err := c.PingCapsule(ctx, connect.NewRequest(&pb.PingCapsuleRequest{CapsuleId: id}))
	if err != nil || ping.Msg.GetState() != pb.CapsuleState_CAPSULE_STATE_PAUSED {
		t.Errorf("ping paused: %+v %v", ping, err)
	}
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("second pause: got %v, want FailedPrecondition", err)
	}

	rs, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id}))
	if err != nil {
		t.Fatalf("ResumeCapsule: %v", err)
	}
	if rs.Msg.GetCapsule().GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING {
		t.Errorf("resumed state: %v", rs.Msg.GetCapsule().GetState())
	}
	if !hostagent.SamplerRunning(h.agent, id) {
		t.Error("metrics sampler not running after resume")
	}
	if got := execOK(t, c, id, "/bin/cat", "/home/data/note.txt", "/run/wrenn/.WRENN_TEMPLATE_ID"); got != "note body"+tmplName {
		t.Errorf("after resume: got %q", got)
	}
	ping, err = c.PingCapsule(ctx, connect.NewRequest(&pb.PingCapsuleRequest{CapsuleId: id}))
	if err != nil || !ping.Msg.GetEnvdHealthy() || ping.Msg.GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING {
		t.Errorf("ping running: %+v %v", ping, err)
	}

	list, err := c.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil || len(list.Msg.GetCapsules()) != 1 {
		t.Fatalf("ListCapsules: %+v %v", list, err)
	}
	info, err := c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil || info.Msg.GetDriver() != "container" || !info.Msg.GetCanPause() || info.Msg.GetCapsules() != 1 || info.Msg.GetMemoryCommittedBytes() != 128<<20 {
		t.Errorf("GetHostInfo: %+v %v", info, err)
	}
	// A lone container driver runs containers only: the other isolations
	// are reported missing, with a reason.
	if isos := info.Msg.GetIsolations(); len(isos) != 3 || isos[0].GetName() != "container" || !isos[0].GetAvailable() ||
		isos[1].GetAvailable() || isos[1].GetReason() == "" || info.Msg.GetDefaultIsolation() != "container" {
		t.Errorf("GetHostInfo isolations: %v (default %q)", isos, info.Msg.GetDefaultIsolation())
	}

	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("DestroyCapsule: %v", err)
	}
	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("second destroy: got %v, want NotFound", err)
	}
	list, _ = c.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if len(list.Msg.GetCapsules()) != 0 {
		t.Errorf("after destroy: %d capsules listed", len(list.Msg.GetCapsules()))
	}
	// The driver's teardown runs after the answer and ends within a
	// second (issue 21: the host back to its baseline within 1 s).
	testutil.Eventually(t, time.Second, func() bool {
		_, err := h.driver.Inspect(ctx, id)
		p, _ := h.agent.Teardowns()
		return errors.Is(err, runtime.ErrNotFound) && p == 0
	}, "driver still has the capsule 1 s after its destroy answered")
	if _, failed := h.agent.Teardowns(); failed != 0 {
		t.Errorf("%d failed teardowns", failed)
	}
}

func TestBadRequests(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	ctx := testutil.Context(t, testutil.Long)
	tests := []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"no secret", func() error {
			_, err := newClient(h.url, "").ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
			return err
		}, connect.CodeUnauthenticated},
		{"wrong secret", func() error {
			_, err := newClient(h.url, "nope").ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
			return err
		}, connect.CodeUnauthenticated},
		{"create without id", func() error {
			_, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{}))
			return err
		}, connect.CodeInvalidArgument},
		{"create with a bad id", func() error {
			_, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: "../etc"}))
			return err
		}, connect.CodeInvalidArgument},
		{"unknown template", func() error {
			_, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: newID(), Template: "no-such-template"}))
			return err
		}, connect.CodeNotFound},
		{"exec on unknown capsule", func() error {
			_, err := h.client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: "cl-nope", Cmd: "/bin/true"}))
			return err
		}, connect.CodeNotFound},
		{"exec without cmd", func() error {
			_, err := h.client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: "cl-nope"}))
			return err
		}, connect.CodeInvalidArgument},
		{"resume unknown", func() error {
			_, err := h.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: "cl-nope"}))
			return err
		}, connect.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := connect.CodeOf(tt.call()); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	list, err := h.client.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil || len(list.Msg.GetCapsules()) != 0 {
		t.Errorf("failed creates left capsules: %+v %v", list, err)
	}
	drv, _ := h.driver.List(ctx)
	if len(drv) != 0 {
		t.Errorf("failed creates left %d capsules in the driver", len(drv))
	}
}

func TestProcessesAndPTY(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{}).GetCapsuleId()

	sp, err := c.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{
		CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", "echo started; read line; echo got:$line; sleep 60"}, Tag: "worker", Stdin: true,
	}))
	if err != nil {
		t.Fatal(err)
	}
	pid := sp.Msg.GetPid()
	ls, err := c.ListProcesses(ctx, connect.NewRequest(&pb.ListProcessesRequest{CapsuleId: id}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range ls.Msg.GetProcesses() {
		found = found || (p.GetPid() == pid && p.GetTag() == "worker")
	}
	if !found {
		t.Fatalf("ListProcesses: %v lacks pid %d tag worker", ls.Msg.GetProcesses(), pid)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.ConnectProcess(cctx, connect.NewRequest(&pb.ConnectProcessRequest{CapsuleId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "worker"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SendProcessInput(ctx, connect.NewRequest(&pb.SendProcessInputRequest{
		CapsuleId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Data: []byte("ping\n"),
	})); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for !strings.Contains(out.String(), "got:ping") && st.Receive() {
		out.Write(st.Msg().GetStdout())
	}
	// "started" may have gone to StartProcess's own (closed) stream; what
	// the process prints after ConnectProcess attached must arrive.
	if !strings.Contains(out.String(), "got:ping") {
		t.Fatalf("ConnectProcess output: %q (err %v)", out.String(), st.Err())
	}
	if _, err := c.KillProcess(ctx, connect.NewRequest(&pb.KillProcessRequest{CapsuleId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}})); err != nil {
		t.Fatal(err)
	}
	var end *pb.ProcessEnd
	for st.Receive() {
		if e := st.Msg().GetEnd(); e != nil {
			end = e
		}
	}
	if end == nil || end.GetExited() {
		t.Errorf("after KillProcess: end %+v (err %v), want a signalled end", end, st.Err())
	}

	// PTY: start a shell, type into it, resize, kill.
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	ps, err := c.PtyStart(pctx, connect.NewRequest(&pb.PtyStartRequest{CapsuleId: id, Cols: 100, Rows: 30}))
	if err != nil {
		t.Fatal(err)
	}
	if !ps.Receive() || ps.Msg().GetStartedPid() == 0 {
		t.Fatalf("PtyStart: no start event (%v)", ps.Err())
	}
	ptyPid := ps.Msg().GetStartedPid()
	if _, err := c.PtyResize(ctx, connect.NewRequest(&pb.PtyResizeRequest{CapsuleId: id, Pid: ptyPid, Cols: 123, Rows: 45})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PtyInput(ctx, connect.NewRequest(&pb.PtyInputRequest{CapsuleId: id, Pid: ptyPid, Data: []byte("stty size; echo mark$((40+2))\n")})); err != nil {
		t.Fatal(err)
	}
	var screen strings.Builder
	for !strings.Contains(screen.String(), "mark42") && ps.Receive() {
		screen.Write(ps.Msg().GetData())
	}
	if !strings.Contains(screen.String(), "45 123") || !strings.Contains(screen.String(), "mark42") {
		t.Fatalf("pty output: %q (err %v)", screen.String(), ps.Err())
	}
	if _, err := c.PtyKill(ctx, connect.NewRequest(&pb.PtyKillRequest{CapsuleId: id, Pid: ptyPid})); err != nil {
		t.Fatal(err)
	}
	var ptyEnd *pb.ProcessEnd
	for ps.Receive() {
		if e := ps.Msg().GetEnd(); e != nil {
			ptyEnd = e
		}
	}
	if ptyEnd == nil {
		t.Errorf("pty stream ended without an end event: %v", ps.Err())
	}
}

func TestTTLReaper(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	short := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 1}).GetCapsuleId()
	kept := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 1}).GetCapsuleId()
	// Refresh kept's TTL before it runs out.
	res, err := c.SetCapsuleTimeout(ctx, connect.NewRequest(&pb.SetCapsuleTimeoutRequest{CapsuleId: kept, TimeoutSec: 120}))
	if err != nil {
		t.Fatal(err)
	}
	if exp := time.Unix(res.Msg.GetExpiresAt(), 0); time.Until(exp) < 100*time.Second {
		t.Errorf("refreshed expiry %v is not ~120 s away", exp)
	}
	testutil.Eventually(t, testutil.Long, func() bool {
		_, err := c.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: short}))
		return connect.CodeOf(err) == connect.CodeNotFound
	}, "expired capsule not reaped")
	if _, err := h.driver.Inspect(ctx, short); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("reaped capsule still in the driver: %v", err)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := execOK(t, c, kept, "/bin/echo", "alive"); got != "alive\n" {
		t.Errorf("refreshed capsule: got %q", got)
	}
}

func TestRestartReadoption(t *testing.T) {
	d := newDirs(t)
	h1 := startHost(t, d, nil)
	ctx := testutil.Context(t, testutil.Long)
	running := create(t, h1.client, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	paused := create(t, h1.client, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	if _, err := h1.client.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{CapsuleId: running, Path: "/root/keep.txt", Content: []byte("kept")})); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: paused})); err != nil {
		t.Fatal(err)
	}
	// A capsule the driver holds but the agent never finished creating
	// (as after a kill -9 mid-create): the restarted agent must remove it.
	orphan := newID()
	if _, err := h1.driver.Create(ctx, runtime.Spec{ID: orphan, Template: tmplName}); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.driver.Start(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	// Drop the agent without any cleanup of capsules.
	h1.stop()

	h2 := startHost(t, d, nil)
	list, err := h2.client.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]pb.CapsuleState{}
	for _, cp := range list.Msg.GetCapsules() {
		states[cp.GetCapsuleId()] = cp.GetState()
	}
	want := map[string]pb.CapsuleState{running: pb.CapsuleState_CAPSULE_STATE_RUNNING, paused: pb.CapsuleState_CAPSULE_STATE_PAUSED}
	if len(states) != len(want) || states[running] != want[running] || states[paused] != want[paused] {
		t.Fatalf("after restart: got %v, want %v", states, want)
	}
	if _, err := h2.driver.Inspect(ctx, orphan); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("half-created capsule survived the restart: %v", err)
	}
	if got := execOK(t, h2.client, running, "/bin/cat", "/root/keep.txt"); got != "kept" {
		t.Errorf("re-adopted capsule: got %q", got)
	}
	if !hostagent.SamplerRunning(h2.agent, running) {
		t.Error("re-adopted running capsule has no sampler")
	}
	if _, err := h2.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: paused})); err != nil {
		t.Fatalf("resume of a re-adopted paused capsule: %v", err)
	}
	if got := execOK(t, h2.client, paused, "/bin/echo", "ok"); got != "ok\n" {
		t.Errorf("resumed re-adopted capsule: got %q", got)
	}
}

func TestPauseToDiskAndSnapshotTemplate(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 600}).GetCapsuleId()
	if _, err := c.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{CapsuleId: id, Path: "/srv/app.txt", Content: []byte("v1")})); err != nil {
		t.Fatal(err)
	}

	t.Run("capsule to template", func(t *testing.T) {
		name := fmt.Sprintf("snap-%d", time.Now().UnixNano()%1000000)
		res, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{CapsuleId: id, Template: name}))
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
		t.Cleanup(func() { _ = templates.Delete(name) })
		if res.Msg.GetTemplate() != name || res.Msg.GetSizeBytes() <= 0 {
			t.Errorf("CreateSnapshot: %+v", res.Msg)
		}
		// The source capsule runs on.
		if got := execOK(t, c, id, "/bin/cat", "/srv/app.txt"); got != "v1" {
			t.Errorf("source after snapshot: got %q", got)
		}
		child := create(t, c, &pb.CreateCapsuleRequest{Template: name}).GetCapsuleId()
		if got := execOK(t, c, child, "/bin/sh", "-c", "cat /srv/app.txt; cat /run/wrenn/.WRENN_TEMPLATE_ID"); got != "v1"+name {
			t.Errorf("capsule from the new template: got %q", got)
		}
		_, err = c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{CapsuleId: id, Template: name}))
		if connect.CodeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("snapshot onto an existing template: got %v, want AlreadyExists", err)
		}

		// Deleting a template: refused while a capsule uses it, for the
		// default template and for a bad name; then it goes, files and all.
		del := func(n string) error {
			_, err := c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Template: n}))
			return err
		}
		if err := del(name); connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), child) {
			t.Errorf("delete a template in use: %v, want FailedPrecondition naming %s", err, child)
		}
		if err := del(tmplName); connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Errorf("delete the default template: %v, want FailedPrecondition", err)
		}
		if err := del("../etc"); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("delete a bad name: %v, want InvalidArgument", err)
		}
		if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: child})); err != nil {
			t.Fatal(err)
		}
		listed := func() map[string]bool {
			lt, err := c.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]bool{}
			for _, tm := range lt.Msg.GetTemplates() {
				m[tm.GetName()] = tm.GetSizeBytes() > 0 && tm.GetCreatedAt() > 0
			}
			return m
		}
		if !listed()[name] || !listed()[tmplName] {
			t.Errorf("ListTemplates = %v, want %s and %s with sizes and times", listed(), name, tmplName)
		}
		if err := del(name); err != nil {
			t.Fatalf("delete an unused template: %v", err)
		}
		if _, ok := listed()[name]; ok {
			t.Error("deleted template still listed")
		}
		ents, _ := os.ReadDir(templates.Dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), name) {
				t.Errorf("left in the template directory after delete: %s", e.Name())
			}
		}
		if err := del(name); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("delete again: %v, want NotFound", err)
		}
		_, err = c.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: newID(), Template: name}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("create from a deleted template: %v, want NotFound", err)
		}
	})

	t.Run("pause to disk", func(t *testing.T) {
		pr, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
		if err != nil {
			t.Fatalf("pause to disk: %v", err)
		}
		if pr.Msg.GetSnapshotId() == "" || pr.Msg.GetCapsule().GetState() != pb.CapsuleState_CAPSULE_STATE_HIBERNATED {
			t.Errorf("pause to disk: %+v", pr.Msg)
		}
		if hostagent.SamplerRunning(h.agent, id) {
			t.Error("sampler running on a hibernated capsule")
		}
		rs, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id}))
		if err != nil {
			t.Fatalf("resume from disk: %v", err)
		}
		if rs.Msg.GetCapsule().GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING {
			t.Errorf("resumed: %+v", rs.Msg.GetCapsule())
		}
		if got := execOK(t, c, id, "/bin/sh", "-c", "cat /srv/app.txt; cat /run/wrenn/.WRENN_TEMPLATE_ID"); got != "v1"+tmplName {
			t.Errorf("after restore: got %q", got)
		}
	})
}

// TestTemplateTrashRemovedAtStart: a template delete interrupted between
// its rename and the removal leaves a trash directory; the next agent
// removes it.
func TestTemplateTrashRemovedAtStart(t *testing.T) {
	trash := filepath.Join(templates.Dir, ".deleting-gone-123")
	if err := os.MkdirAll(filepath.Join(trash, "gone", "rootfs", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(trash) })
	startHost(t, newDirs(t), nil)
	if _, err := os.Stat(trash); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("trash of an interrupted template delete survived an agent start: %v", err)
	}
}

func TestPortProxyThroughAgent(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{}).GetCapsuleId()
	// busybox httpd serving a file on port 8080 inside the capsule.
	if _, err := c.WriteFile(ctx, connect.NewRequest(&pb.WriteFileRequest{CapsuleId: id, Path: "/www/index.html", Content: []byte("served from the capsule")})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{CapsuleId: id, Cmd: "/bin/busybox", Args: []string{"httpd", "-f", "-p", "8080", "-h", "/www"}})); err != nil {
		t.Fatal(err)
	}
	get := func(token string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/proxy/"+id+"/8080/index.html", nil)
		if token != "" {
			req.Header.Set(hostagent.SecretHeader, token)
		}
		resp, err := httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Errorf("proxy without the host secret: got %d, want 401", code)
	}
	testutil.Eventually(t, testutil.Short, func() bool {
		code, body := get(secret)
		return code == http.StatusOK && body == "served from the capsule"
	}, "port proxy did not reach the capsule's server")
	if h.agent.Proxy().Cached() == 0 {
		t.Error("no cached reverse proxy after a request")
	}
	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
	if n := h.agent.Proxy().Cached(); n != 0 {
		t.Errorf("%d cached proxies after destroy, want 0", n)
	}
	if code, _ := get(secret); code != http.StatusNotFound {
		t.Errorf("proxy to a destroyed capsule: got %d, want 404", code)
	}
}

func TestFailedResumeDestroys(t *testing.T) {
	h := startHost(t, newDirs(t), func(c *hostagent.Config) { c.ReadyTimeout = 2 * time.Second })
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{}).GetCapsuleId()
	if _, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
	info, err := h.driver.Inspect(ctx, id)
	if err != nil || info.PID == 0 {
		t.Fatalf("inspect: %+v %v", info, err)
	}
	// SIGKILL to a frozen envd lands when it is thawed: the resume then
	// finds no envd and must destroy the capsule.
	if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The caller gives up long before the agent does; the cleanup must
	// still happen (it runs on the agent's own context).
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = c.ResumeCapsule(cctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id}))
	if err == nil {
		t.Fatal("resume of a capsule whose envd died succeeded")
	}
	testutil.Eventually(t, testutil.Long, func() bool {
		_, err := c.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
		_, derr := h.driver.Inspect(ctx, id)
		return connect.CodeOf(err) == connect.CodeNotFound && errors.Is(derr, runtime.ErrNotFound)
	}, "a capsule whose resume failed is still there (zombie)")
}

// TestEnvdRouteThroughAgent: /envd/{capsule}/… reaches the capsule's envd
// with the capsule's own token (whatever X-Access-Token the caller sent),
// only with the host secret; the public port proxy still refuses envd's
// port; a destroyed capsule is 404.
func TestEnvdRouteThroughAgent(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	id := create(t, c, &pb.CreateCapsuleRequest{}).GetCapsuleId()
	get := func(path, hostSecret, accessToken string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+path, nil)
		if hostSecret != "" {
			req.Header.Set(hostagent.SecretHeader, hostSecret)
		}
		if accessToken != "" {
			req.Header.Set("X-Access-Token", accessToken)
		}
		resp, err := httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/envd/"+id+"/envs", "", ""); code != http.StatusUnauthorized {
		t.Errorf("envd route without the host secret: got %d, want 401", code)
	}
	// /envs needs envd's access token: the agent supplies it.
	if code, body := get("/envd/"+id+"/envs", secret, "not-the-token"); code != http.StatusOK {
		t.Errorf("envd route with the host secret: got %d %s, want 200", code, body)
	}
	if code, _ := get("/proxy/"+id+"/49983/envs", secret, ""); code != http.StatusNotFound {
		t.Errorf("port proxy to envd's port: got %d, want 404", code)
	}
	if code, _ := get("/envd/cl-nope/envs", secret, ""); code != http.StatusNotFound {
		t.Errorf("envd route to an unknown capsule: got %d, want 404", code)
	}
	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/envd/"+id+"/envs", secret, ""); code != http.StatusNotFound {
		t.Errorf("envd route to a destroyed capsule: got %d, want 404", code)
	}
}
