package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

func TestExitCodes(t *testing.T) {
	h := newHarness(t, fast)
	tests := []struct {
		name       string
		req        *pb.StartRequest
		wantCode   int32
		wantExited bool
		wantStatus string
	}{
		{"true", startReq("true"), 0, true, "exit status 0"},
		{"false", startReq("false"), 1, true, "exit status 1"},
		{"exit 42", startReq("sh", "-c", "exit 42"), 42, true, "exit status 42"},
		{"sigkill", startReq("sh", "-c", "kill -KILL $$"), 128 + 9, false, "signal: killed"},
		{"sigterm", startReq("sh", "-c", "kill -TERM $$"), 128 + 15, false, "signal: terminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.mustRun(t, tt.req)
			if r.pid == 0 {
				t.Fatal("no start event with a pid")
			}
			got := r.end
			if got.GetExitCode() != tt.wantCode || got.GetExited() != tt.wantExited || got.GetStatus() != tt.wantStatus || got.Error != nil {
				t.Fatalf("end = %v, want exit_code %d exited %v status %q", got, tt.wantCode, tt.wantExited, tt.wantStatus)
			}
		})
	}
}

func TestStdoutStderr(t *testing.T) {
	h := newHarness(t, fast)
	r := h.mustRun(t, startReq("sh", "-c", "echo out; echo err >&2; printf tail"))
	if got, want := r.stdout.String(), "out\ntail"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := r.stderr.String(), "err\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}

func TestEnv(t *testing.T) {
	h := newHarness(t, fast)
	h.defaults.MergeEnvs(map[string]string{"FROM_DEFAULT": "d", "OVERRIDDEN": "default"})
	dir := t.TempDir()
	req := startReq("env")
	req.Process.Envs = map[string]string{"OVERRIDDEN": "request", "FROM_REQUEST": "r"}
	req.Process.Cwd = &dir
	r := h.mustRun(t, req)
	got := map[string]string{}
	for line := range strings.Lines(r.stdout.String()) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		got[k] = v
	}
	me, err := identity.Current()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"FROM_DEFAULT": "d",
		"OVERRIDDEN":   "request",
		"FROM_REQUEST": "r",
		"PATH":         defaultPath,
		"HOME":         me.Home,
		"USER":         me.Name,
		"LOGNAME":      me.Name,
		"SHELL":        me.Shell,
		"PWD":          dir,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("env %s = %q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["TERM"]; ok {
		t.Errorf("TERM set without a PTY: %q", got["TERM"])
	}
}

func TestCwd(t *testing.T) {
	h := newHarness(t, fast)
	me, err := identity.Current()
	if err != nil {
		t.Fatal(err)
	}
	inHome, err := os.MkdirTemp(me.Home, "wrenn-cwd-")
	if err != nil {
		t.Skipf("cannot create a directory in the home %s: %v", me.Home, err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(inHome) })
	abs := t.TempDir()
	workdir := t.TempDir()
	ptr := func(s string) *string { return &s }
	tests := []struct {
		name    string
		cwd     *string
		workdir string
		want    string
	}{
		{"absolute", ptr(abs), "", abs},
		{"relative to home", ptr(filepath.Base(inHome)), "", inHome},
		{"tilde", ptr("~/" + filepath.Base(inHome)), "", inHome},
		{"default is home", nil, "", filepath.Clean(me.Home)},
		{"default workdir", nil, workdir, workdir},
		{"explicit beats workdir", ptr(abs), workdir, abs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.defaults.SetWorkdir(tt.workdir)
			req := startReq("pwd")
			req.Process.Cwd = tt.cwd
			r := h.mustRun(t, req)
			if got := strings.TrimSpace(r.stdout.String()); got != tt.want {
				t.Fatalf("pwd = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStdin(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)

	t.Run("send, stream and close", func(t *testing.T) {
		stream, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("cat")))
		sel := byPID(r.pid)
		h.send(t, sel, stdinInput("hello\n"))
		in := h.client.StreamInput(ctx)
		msgs := []*pb.StreamInputRequest{
			{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}},
			{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}},
		}
		for i := range 100 {
			msgs = append(msgs, &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: stdinInput(strconv.Itoa(i) + ",")}}})
		}
		for _, m := range msgs {
			if err := in.Send(m); err != nil {
				t.Fatalf("stream input: %v", err)
			}
		}
		if _, err := in.CloseAndReceive(); err != nil {
			t.Fatalf("stream input: %v", err)
		}
		if _, err := h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
			t.Fatalf("close stdin: %v", err)
		}
		rest, err := drain(stream)
		if err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		want.WriteString("hello\n")
		for i := range 100 {
			want.WriteString(strconv.Itoa(i) + ",")
		}
		if got := r.stdout.String() + rest.stdout.String(); got != want.String() {
			t.Fatalf("cat echoed %q, want %q", got, want.String())
		}
		if rest.end.GetExitCode() != 0 {
			t.Fatalf("cat ended %v after EOF", rest.end)
		}
		_, err = h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: stdinInput("x")}))
		wantCode(t, err, connect.CodeNotFound, "no process")
	})

	t.Run("input after close", func(t *testing.T) {
		_, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("sleep", "5")))
		sel := byPID(r.pid)
		t.Cleanup(func() { _ = unix.Kill(-int(r.pid), unix.SIGKILL) })
		if _, err := h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
			t.Fatalf("close stdin: %v", err)
		}
		_, err := h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: stdinInput("x")}))
		wantCode(t, err, connect.CodeFailedPrecondition, "stdin")
		_, err = h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
		wantCode(t, err, connect.CodeFailedPrecondition, "closed")
	})

	t.Run("stdin disabled", func(t *testing.T) {
		req := startReq("sh", "-c", "read x; echo rc=$?; sleep 5")
		off := false
		req.Stdin = &off
		stream, r := h.started(ctx, t, h.client, connect.NewRequest(req))
		t.Cleanup(func() { _ = unix.Kill(-int(r.pid), unix.SIGKILL) })
		until(t, stream, r, func(r *result) bool { return strings.Contains(r.stdout.String(), "rc=1") })
		_, err := h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: byPID(r.pid), Input: stdinInput("x")}))
		wantCode(t, err, connect.CodeFailedPrecondition, "without stdin")
		_, err = h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: byPID(r.pid)}))
		wantCode(t, err, connect.CodeFailedPrecondition, "without stdin")
		_, err = h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: byPID(r.pid), Input: ptyInput("x")}))
		wantCode(t, err, connect.CodeFailedPrecondition, "no PTY")
	})
}

func TestInputCoalescing(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	// A small pipe that nobody reads yet: the first write fills it and
	// blocks, and everything sent meanwhile must go out in few writes.
	setSize := func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 4096) }
	rc, err := w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(setSize); err != nil {
		t.Fatal(err)
	}
	// Fill the pipe so the writer's first write blocks until the reader
	// below starts: every keystroke is queued by then, whatever the speed
	// of this goroutine (the race detector slows it a lot).
	filler := bytes.Repeat([]byte{'.'}, 4096)
	if _, err := w.Write(filler); err != nil {
		t.Fatal(err)
	}
	in := newInputWriter(w, true)
	ctx := testutil.Context(t, testutil.Short)
	const keys = 2000
	var want bytes.Buffer
	for i := range keys {
		key := []byte{byte('a' + i%26)}
		want.Write(key)
		if err := in.write(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.closeInput(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, keys+len(filler))
	buf := make([]byte, 512)
	for {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	<-in.done
	got = bytes.TrimPrefix(got, filler)
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("pipe got %d bytes, want %d in order", len(got), want.Len())
	}
	if n := in.writes.Load(); n > keys/10 {
		t.Fatalf("%d keystrokes took %d writes, want them coalesced", keys, n)
	}
}

func TestPTY(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	withPTY := func(req *pb.StartRequest, cols, rows uint32) *connect.Request[pb.StartRequest] {
		req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: cols, Rows: rows}}
		return connect.NewRequest(req)
	}

	t.Run("echo and ctrl-d", func(t *testing.T) {
		stream, r := h.started(ctx, t, h.client, withPTY(startReq("cat"), 80, 24))
		sel := byPID(r.pid)
		h.send(t, sel, ptyInput("hello\n"))
		// The terminal echoes the line, then cat prints it.
		until(t, stream, r, func(r *result) bool { return strings.Count(r.pty.String(), "hello\r\n") == 2 })
		if r.stdout.Len() != 0 || r.stderr.Len() != 0 {
			t.Fatalf("PTY output leaked to stdout/stderr: %q %q", r.stdout.String(), r.stderr.String())
		}
		_, err := h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
		wantCode(t, err, connect.CodeFailedPrecondition, "use Ctrl+D")
		_, err = h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: stdinInput("x")}))
		wantCode(t, err, connect.CodeFailedPrecondition, "has a PTY")
		h.send(t, sel, ptyInput("\x04"))
		rest, err := drain(stream)
		if err != nil {
			t.Fatal(err)
		}
		if rest.end.GetExitCode() != 0 || !rest.end.GetExited() {
			t.Fatalf("cat on a PTY ended %v after Ctrl+D", rest.end)
		}
	})

	t.Run("resize", func(t *testing.T) {
		stream, r := h.started(ctx, t, h.client, withPTY(startReq("sh", "-c", "stty size; read x; stty size"), 80, 24))
		sel := byPID(r.pid)
		until(t, stream, r, func(r *result) bool { return strings.Contains(r.pty.String(), "24 80\r\n") })
		_, err := h.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 120, Rows: 40}}}))
		if err != nil {
			t.Fatalf("update: %v", err)
		}
		_, err = h.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{}}}))
		wantCode(t, err, connect.CodeInvalidArgument, "invalid pty size")
		h.send(t, sel, ptyInput("\n"))
		until(t, stream, r, func(r *result) bool { return strings.Contains(r.pty.String(), "40 120\r\n") })
	})

	t.Run("term and session", func(t *testing.T) {
		r, err := h.run(t, withPTY(startReq("sh", "-c", `echo "$TERM"; cut -d" " -f6 /proc/$$/stat; echo $$`), 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		fields := strings.Fields(r.pty.String())
		if len(fields) != 3 || fields[0] != "xterm-256color" || fields[1] != fields[2] {
			t.Fatalf("want TERM and the shell leading its own session, got %q", r.pty.String())
		}
	})

	t.Run("update without pty", func(t *testing.T) {
		_, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("sleep", "5")))
		t.Cleanup(func() { _ = unix.Kill(-int(r.pid), unix.SIGKILL) })
		_, err := h.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: byPID(r.pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 1, Rows: 1}}}))
		wantCode(t, err, connect.CodeFailedPrecondition, "no PTY")
	})
}

func TestSignals(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	tests := []struct {
		name   string
		signal pb.Signal
		want   int32
		status string
	}{
		{"sigterm", pb.Signal_SIGNAL_SIGTERM, 128 + 15, "signal: terminated"},
		{"sigkill", pb.Signal_SIGNAL_SIGKILL, 128 + 9, "signal: killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The shell's background child is in the same process group, so
			// the signal reaches it too.
			stream, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("sh", "-c", "sleep 100 & echo $!; wait")))
			until(t, stream, r, func(r *result) bool { return strings.HasSuffix(r.stdout.String(), "\n") })
			child, err := strconv.Atoi(strings.TrimSpace(r.stdout.String()))
			if err != nil {
				t.Fatalf("child pid %q: %v", r.stdout.String(), err)
			}
			if _, err := h.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: byPID(r.pid), Signal: tt.signal})); err != nil {
				t.Fatalf("signal: %v", err)
			}
			rest, err := drain(stream)
			if err != nil {
				t.Fatal(err)
			}
			if rest.end.GetExitCode() != tt.want || rest.end.GetExited() || rest.end.GetStatus() != tt.status {
				t.Fatalf("end = %v, want exit_code %d status %q", rest.end, tt.want, tt.status)
			}
			testutil.Eventually(t, testutil.Short, func() bool { return !alive(child) }, "background child survived the group signal")
		})
	}
	_, err := h.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: byPID(1 << 30), Signal: pb.Signal_SIGNAL_SIGKILL}))
	wantCode(t, err, connect.CodeNotFound, "no process")
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func TestUserSwitch(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Fatal("useradd not installed: install Debian package passwd (scripts/deps.sh does)")
	}
	h := newHarness(t, fast)
	name := fmt.Sprintf("wrp%d", os.Getpid()%100000)
	home, err := os.MkdirTemp("", "wrenn-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	if out, err := exec.Command("useradd", "-M", "-d", home, "-s", "/bin/sh", "-U", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
	u, err := identity.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o755); err != nil {
		t.Fatal(err)
	}

	req := connect.NewRequest(startReq("sh", "-c", `id -u; id -g; id -G; echo "$HOME"; echo "$USER"; pwd; touch f; stat -c %u f`))
	r, err := h.run(t, asUser(req, name))
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := strconv.Itoa(int(u.UID)), strconv.Itoa(int(u.GID))
	want := []string{uid, gid, gid, home, name, home, uid}
	if got := strings.Fields(r.stdout.String()); !slices.Equal(got, want) {
		t.Fatalf("as %s got %q, want %q (stderr %q)", name, got, want, r.stderr.String())
	}

	// The default user from /init applies when the request names nobody.
	h.defaults.SetUser(name)
	r = h.mustRun(t, startReq("id", "-u"))
	h.defaults.SetUser("")
	if got := strings.TrimSpace(r.stdout.String()); got != uid {
		t.Fatalf("default user: id -u = %q, want %q", got, uid)
	}

	// root stays root.
	r, err = h.run(t, asUser(connect.NewRequest(startReq("id", "-u")), "root"))
	if err != nil || strings.TrimSpace(r.stdout.String()) != "0" {
		t.Fatalf("as root: %q, %v", r.stdout.String(), err)
	}

	// A directory the user cannot enter.
	private := t.TempDir()
	req = connect.NewRequest(startReq("true"))
	req.Msg.Process.Cwd = &private
	_, err = h.run(t, asUser(req, name))
	wantCode(t, err, connect.CodePermissionDenied, "permission denied")
}

func TestReattach(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	tag := "server"
	req := startReq("sh", "-c", "echo ready; read x; echo got $x; read y; echo bye $y")
	req.Tag = &tag
	start, first := h.started(ctx, t, h.client, connect.NewRequest(req))
	until(t, start, first, func(r *result) bool { return r.stdout.String() == "ready\n" })

	list, err := h.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var info *pb.ProcessInfo
	for _, p := range list.Msg.GetProcesses() {
		if p.GetPid() == first.pid {
			info = p
		}
	}
	if info == nil || info.GetTag() != tag || info.GetConfig().GetCmd() != "sh" || len(info.GetConfig().GetArgs()) != 2 || info.GetConfig().GetCwd() == "" {
		t.Fatalf("list entry for %d = %v", first.pid, info)
	}

	// Starting another process with the same tag while it runs fails.
	_, err = h.run(t, connect.NewRequest(req))
	wantCode(t, err, connect.CodeAlreadyExists, tag)

	otherClient, otherTr := h.newClient()
	t.Cleanup(otherTr.CloseIdleConnections)
	pidStream, byPid := connected(ctx, t, h.client, byPID(first.pid))
	tagStream, byTg := connected(ctx, t, otherClient, byTag(tag))
	if byPid.pid != first.pid || byTg.pid != first.pid {
		t.Fatalf("connect start events name pids %d and %d, want %d", byPid.pid, byTg.pid, first.pid)
	}
	h.send(t, byTag(tag), stdinInput("one\n"))
	until(t, start, first, func(r *result) bool { return strings.Contains(r.stdout.String(), "got one\n") })
	until(t, pidStream, byPid, func(r *result) bool { return strings.Contains(r.stdout.String(), "got one\n") })
	until(t, tagStream, byTg, func(r *result) bool { return strings.Contains(r.stdout.String(), "got one\n") })

	// The original Start stream leaves; the others still get the rest.
	_ = start.Close()
	h.send(t, byPID(first.pid), stdinInput("two\n"))
	for name, s := range map[string]*connect.ServerStreamForClient[pb.ConnectResponse]{"pid": pidStream, "tag": tagStream} {
		rest, err := drain(s)
		if err != nil {
			t.Fatalf("%s stream: %v", name, err)
		}
		if rest.stdout.String() != "bye two\n" || rest.end.GetExitCode() != 0 {
			t.Fatalf("%s stream: rest %q end %v", name, rest.stdout.String(), rest.end)
		}
	}
	testutil.Eventually(t, testutil.Short, func() bool {
		_, err := h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: byTag(tag)}))
		if err != nil {
			return connect.CodeOf(err) == connect.CodeNotFound
		}
		list, err := h.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
		return err == nil && len(list.Msg.GetProcesses()) == 0
	}, "process still listed after its end was delivered")
}

func TestBacklogReplay(t *testing.T) {
	h := newHarness(t, fast, func(s *Service) { s.backlogLimit = 4096 })
	ctx := testutil.Context(t, testutil.Long)
	marker := filepath.Join(t.TempDir(), "written")
	req := startReq("sh", "-c", `read x; seq 1 2000; sleep 0.2; echo err >&2; touch "$1"; read y; echo after`, "sh", marker)
	startCtx, cancelStart := context.WithCancel(ctx)
	_, r := h.started(startCtx, t, h.client, connect.NewRequest(req))
	cancelStart()
	h.svc.mu.Lock()
	p := h.svc.procs[int(r.pid)]
	h.svc.mu.Unlock()
	testutil.Eventually(t, testutil.Short, func() bool {
		p.hub.mu.Lock()
		defer p.hub.mu.Unlock()
		return len(p.hub.subs) == 0
	}, "start stream did not detach")

	// Output while nobody is attached goes to the backlog (last 4096 bytes).
	h.send(t, byPID(r.pid), stdinInput("\n"))
	testutil.Eventually(t, testutil.Short, func() bool { _, err := os.Stat(marker); return err == nil }, "process did not write its output")
	var seq strings.Builder
	for i := 1; i <= 2000; i++ {
		seq.WriteString(strconv.Itoa(i) + "\n")
	}
	wantOut := seq.String()
	wantOut = wantOut[len(wantOut)-(4096-len("err\n")):]

	// The output reaches the backlog once envd read it; wait until both
	// streams were read to their ends before attaching.
	testutil.Eventually(t, testutil.Short, func() bool {
		p.hub.mu.Lock()
		defer p.hub.mu.Unlock()
		var sawErr, sawEnd bool
		for _, c := range p.hub.backlog.chunks {
			sawErr = sawErr || c.kind == kindStderr
			sawEnd = c.kind == kindStdout && bytes.HasSuffix(c.data, []byte("\n2000\n")) || sawEnd && c.kind == kindStderr
		}
		return sawErr && sawEnd
	}, "backlog did not fill")
	stream, again := connected(ctx, t, h.client, byPID(r.pid))
	h.send(t, byPID(r.pid), stdinInput("\n"))
	rest, err := drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	gotOut := again.stdout.String() + rest.stdout.String()
	if gotOut != wantOut+"after\n" {
		t.Fatalf("replayed stdout: got %d bytes ending %q, want %d bytes", len(gotOut), gotOut[max(0, len(gotOut)-20):], len(wantOut)+6)
	}
	if got := again.stderr.String() + rest.stderr.String(); got != "err\n" {
		t.Fatalf("replayed stderr %q", got)
	}
}

func TestEndDeliveredLate(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	startCtx, cancelStart := context.WithCancel(ctx)
	_, r := h.started(startCtx, t, h.client, connect.NewRequest(startReq("sh", "-c", "read x; echo done; exit 3")))
	cancelStart()
	h.svc.mu.Lock()
	p := h.svc.procs[int(r.pid)]
	h.svc.mu.Unlock()
	testutil.Eventually(t, testutil.Short, func() bool {
		p.hub.mu.Lock()
		defer p.hub.mu.Unlock()
		return len(p.hub.subs) == 0
	}, "start stream did not detach")
	h.send(t, byPID(r.pid), stdinInput("\n"))
	<-p.done

	// Ended while nobody listened: still listed, and Connect delivers the
	// output and the end event once.
	list, err := h.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil || len(list.Msg.GetProcesses()) != 1 {
		t.Fatalf("list after an uncollected end: %v, %v", list, err)
	}
	stream, err := h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: byPID(r.pid)}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	if got.pid != r.pid || got.stdout.String() != "done\n" || got.end.GetExitCode() != 3 {
		t.Fatalf("late connect: pid %d stdout %q end %v", got.pid, got.stdout.String(), got.end)
	}
	_, err = h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: byPID(r.pid)}))
	if err == nil {
		s2, _ := h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: byPID(r.pid)}))
		_, err = drain(s2)
	}
	wantCode(t, err, connect.CodeNotFound, "no process")
}

func TestRetention(t *testing.T) {
	h := newHarness(t, fast, func(s *Service) { s.retention = 50 * time.Millisecond })
	ctx := testutil.Context(t, testutil.Long)
	startCtx, cancelStart := context.WithCancel(ctx)
	_, r := h.started(startCtx, t, h.client, connect.NewRequest(startReq("sh", "-c", "read x")))
	cancelStart()
	h.svc.mu.Lock()
	p := h.svc.procs[int(r.pid)]
	h.svc.mu.Unlock()
	testutil.Eventually(t, testutil.Short, func() bool {
		p.hub.mu.Lock()
		defer p.hub.mu.Unlock()
		return len(p.hub.subs) == 0
	}, "start stream did not detach")
	h.send(t, byPID(r.pid), stdinInput("\n"))
	testutil.Eventually(t, testutil.Short, func() bool {
		list, err := h.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
		return err == nil && len(list.Msg.GetProcesses()) == 0
	}, "an uncollected end was kept past the retention time")
}

func TestKeepalive(t *testing.T) {
	h := newHarness(t, fast, func(s *Service) { s.keepalive = 20 * time.Millisecond })
	r := h.mustRun(t, startReq("sleep", "0.3"))
	if r.keepalives == 0 {
		t.Fatal("no keepalive event during a 300 ms process with a 20 ms interval")
	}
}

func TestConcurrentProcesses(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	const n = 200
	type proc struct {
		stream *connect.ServerStreamForClient[pb.StartResponse]
		r      *result
	}
	procs := make([]proc, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			stream, err := h.client.Start(ctx, connect.NewRequest(startReq("sh", "-c", `read x; echo "$1:$x"`, "sh", strconv.Itoa(i))))
			if err != nil {
				errs <- err
				return
			}
			r := &result{}
			for r.pid == 0 && stream.Receive() {
				r.add(stream.Msg().GetEvent())
			}
			if r.pid == 0 {
				errs <- fmt.Errorf("process %d: no start event: %w", i, stream.Err())
				return
			}
			procs[i] = proc{stream, r}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			_ = p.stream.Close()
		}
	})
	list, err := h.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(list.Msg.GetProcesses()); got != n {
		t.Fatalf("list shows %d processes, want %d", got, n)
	}
	errs = make(chan error, n)
	for i := range n {
		wg.Go(func() {
			p := procs[i]
			_, err := h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: byPID(p.r.pid), Input: stdinInput("v\n")}))
			if err != nil {
				errs <- err
				return
			}
			rest, err := drain(p.stream)
			if err != nil {
				errs <- fmt.Errorf("process %d: %w", i, err)
				return
			}
			if want := fmt.Sprintf("%d:v\n", i); rest.stdout.String() != want || rest.end.GetExitCode() != 0 {
				errs <- fmt.Errorf("process %d: stdout %q end %v, want %q", i, rest.stdout.String(), rest.end, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestSlowSubscriber(t *testing.T) {
	// A large stall timeout: the slow subscriber must be dropped because the
	// fast one has room, not because a timer ran out. The budget is several
	// output messages (bulk output moves in messages of up to 1 MiB): with
	// a budget of one message, the fast subscriber, slowed by the race
	// detector, could be the one found full while the stalled one's socket
	// buffers still took its output. The output is many budgets long, so
	// the stalled one fills and is dropped.
	h := newHarness(t, fast, func(s *Service) {
		s.stallTimeout = time.Minute
		s.subBytes = 4 << 20
	})
	ctx := testutil.Context(t, testutil.Long)
	size := 64 << 20
	if testing.Short() {
		size = 32 << 20
	}
	req := startReq("sh", "-c", `read x; head -c "$1" /dev/zero`, "sh", strconv.Itoa(size))
	// Neither side takes gzip: this measures fan-out, not compression.
	fastClient, fastTr := h.newClient(connect.WithAcceptCompression("gzip", nil, nil))
	t.Cleanup(fastTr.CloseIdleConnections)
	fastStream, fastRes := h.started(ctx, t, fastClient, connect.NewRequest(req))
	slowStream, _ := connected(ctx, t, h.newStallingClient(t), byPID(fastRes.pid))

	began := time.Now()
	h.send(t, byPID(fastRes.pid), stdinInput("\n"))
	rest, err := drain(fastStream)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if rest.stdout.Len() != size || rest.end.GetExitCode() != 0 {
		t.Fatalf("fast subscriber got %d bytes and end %v, want %d bytes and exit 0", rest.stdout.Len(), rest.end, size)
	}
	if took > 30*time.Second {
		t.Fatalf("fast subscriber took %v next to a stalled one", took)
	}
	t.Logf("fast subscriber: %d MiB in %v next to a stalled subscriber", size>>20, took)

	// The stalled subscriber was dropped with a clear error, not fed forever.
	slow, err := drain(slowStream)
	wantCode(t, err, connect.CodeResourceExhausted, "too slow")
	if slow.stdout.Len() >= size {
		t.Fatalf("stalled subscriber received everything (%d bytes)", slow.stdout.Len())
	}
}

func TestStalledAloneDoesNotBlockProcess(t *testing.T) {
	h := newHarness(t, fast, func(s *Service) {
		s.stallTimeout = 200 * time.Millisecond
		s.subBytes = 1 << 20
	})
	ctx := testutil.Context(t, testutil.Long)
	size := 32 << 20
	if testing.Short() {
		size = 8 << 20
	}
	req := startReq("sh", "-c", `read x; head -c "$1" /dev/zero; echo; echo last`, "sh", strconv.Itoa(size))
	stream, r := h.started(ctx, t, h.newStallingClient(t), connect.NewRequest(req))
	h.svc.mu.Lock()
	p := h.svc.procs[int(r.pid)]
	h.svc.mu.Unlock()
	// The only subscriber stops reading: after the stall timeout it is
	// dropped and the process runs to its end.
	h.send(t, byPID(r.pid), stdinInput("\n"))
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatal("process stalled behind a subscriber that stopped reading")
	}
	dropped, err := drain(stream)
	t.Logf("stalled stream got %d bytes before the error", dropped.stdout.Len())
	wantCode(t, err, connect.CodeResourceExhausted, "too slow")

	// The end and the last output wait in the backlog for the next one.
	again, err := h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: byPID(r.pid)}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := drain(again)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got.stdout.String(), "\nlast\n") || got.stdout.Len() > DefaultBacklog || got.end.GetExitCode() != 0 {
		t.Fatalf("after the stall: %d bytes, end %v", got.stdout.Len(), got.end)
	}
}

func TestLingeringChildDoesNotHoldEnd(t *testing.T) {
	h := newHarness(t, fast)
	began := time.Now()
	// The background sleep keeps stdout open after the shell exits.
	r := h.mustRun(t, startReq("sh", "-c", "sleep 30 & echo $!"))
	t.Cleanup(func() { _ = unix.Kill(-int(r.pid), unix.SIGKILL) })
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("end took %v while a child held stdout", took)
	}
	if r.end.GetExitCode() != 0 || r.stdout.Len() == 0 {
		t.Fatalf("end %v stdout %q", r.end, r.stdout.String())
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, fast)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ptr := func(s string) *string { return &s }
	tests := []struct {
		name string
		req  *pb.StartRequest
		user string
		auth string
		code connect.Code
		msg  string
	}{
		{name: "no config", req: &pb.StartRequest{}, code: connect.CodeInvalidArgument, msg: "process config"},
		{name: "empty cmd", req: startReq(""), code: connect.CodeInvalidArgument, msg: "cmd is empty"},
		{name: "unknown cmd", req: startReq("wrenn-no-such-command"), code: connect.CodeNotFound, msg: "not found in PATH"},
		{name: "missing path", req: startReq("/nonexistent/bin/x"), code: connect.CodeNotFound, msg: "does not exist"},
		{name: "directory as cmd", req: startReq(dir), code: connect.CodeInvalidArgument, msg: "is a directory"},
		{name: "not executable", req: startReq(file), code: connect.CodePermissionDenied, msg: "not executable"},
		{name: "nul in arg", req: startReq("echo", "a\x00b"), code: connect.CodeInvalidArgument, msg: "NUL"},
		{name: "bad env name", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Envs: map[string]string{"A=B": "c"}}}, code: connect.CodeInvalidArgument, msg: "environment variable"},
		{name: "missing cwd", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: ptr("/nonexistent/dir")}}, code: connect.CodeNotFound, msg: "does not exist"},
		{name: "cwd is a file", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: &file}}, code: connect.CodeInvalidArgument, msg: "not a directory"},
		{name: "unknown user", req: startReq("true"), user: "wrenn-no-such-user", code: connect.CodeInvalidArgument, msg: "unknown user"},
		{name: "malformed auth", req: startReq("true"), auth: "Basic !!!", code: connect.CodeInvalidArgument, msg: "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := connect.NewRequest(tt.req)
			if tt.user != "" {
				asUser(req, tt.user)
			}
			if tt.auth != "" {
				req.Header().Set("Authorization", tt.auth)
			}
			_, err := h.run(t, req)
			wantCode(t, err, tt.code, tt.msg)
		})
	}

	ctx := testutil.Context(t, testutil.Short)
	selectors := []struct {
		name string
		sel  *pb.ProcessSelector
		code connect.Code
	}{
		{"unknown pid", byPID(1 << 30), connect.CodeNotFound},
		{"unknown tag", byTag("no-such-tag"), connect.CodeNotFound},
		{"no selector", nil, connect.CodeInvalidArgument},
	}
	for _, tt := range selectors {
		t.Run(tt.name, func(t *testing.T) {
			calls := map[string]func() error{
				"connect": func() error {
					s, err := h.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: tt.sel}))
					if err != nil {
						return err
					}
					_, err = drain(s)
					return err
				},
				"send input": func() error {
					_, err := h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: tt.sel, Input: stdinInput("x")}))
					return err
				},
				"signal": func() error {
					_, err := h.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: tt.sel, Signal: pb.Signal_SIGNAL_SIGTERM}))
					return err
				},
				"update": func() error {
					_, err := h.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: tt.sel}))
					return err
				},
				"close stdin": func() error {
					_, err := h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: tt.sel}))
					return err
				},
			}
			for name, call := range calls {
				if err := call(); connect.CodeOf(err) != tt.code {
					t.Errorf("%s: got %v, want code %v", name, err, tt.code)
				}
			}
		})
	}

	t.Run("bad signal and empty input", func(t *testing.T) {
		stream, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("cat")))
		_, err := h.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: byPID(r.pid)}))
		wantCode(t, err, connect.CodeInvalidArgument, "unsupported signal")
		_, err = h.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: byPID(r.pid)}))
		wantCode(t, err, connect.CodeInvalidArgument, "input is empty")
		in := h.client.StreamInput(ctx)
		_ = in.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: stdinInput("x")}}})
		_, err = in.CloseAndReceive()
		wantCode(t, err, connect.CodeInvalidArgument, "must be start")
		if _, err := h.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: byPID(r.pid)})); err != nil {
			t.Fatal(err)
		}
		if _, err := drain(stream); err != nil {
			t.Fatal(err)
		}
	})

	// After all that the service still works.
	if r := h.mustRun(t, startReq("echo", "ok")); r.stdout.String() != "ok\n" {
		t.Fatalf("service broken after bad input: %q", r.stdout.String())
	}
}

func TestClose(t *testing.T) {
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	stream, _ := h.started(ctx, t, h.client, connect.NewRequest(startReq("sleep", "100")))
	done := make(chan struct{})
	go func() {
		h.svc.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testutil.Short):
		t.Fatal("Close did not return")
	}
	r, err := drain(stream)
	if err != nil || r.end.GetExitCode() != 128+9 {
		t.Fatalf("stream after Close: end %v, err %v", r.end, err)
	}
	_, err = h.run(t, connect.NewRequest(startReq("true")))
	wantCode(t, err, connect.CodeUnavailable, "shutting down")
}

func TestReapOrphans(t *testing.T) {
	// Make this test process a subreaper so that orphans come to it, as they
	// come to envd when it is PID 1.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	h := newHarness(t, fast)
	ctx, cancel := context.WithCancel(testutil.Context(t, testutil.Long))
	var wg sync.WaitGroup
	wg.Go(func() { h.svc.ReapOrphans(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	// Service processes keep their real exit status while the reaper runs.
	var runs sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		runs.Go(func() {
			r, err := h.run(t, connect.NewRequest(startReq("sh", "-c", "exit $1", "sh", strconv.Itoa(i%100))))
			switch {
			case err != nil:
				errs <- err
			case r.end.GetExitCode() != int32(i%100) || r.end.Error != nil:
				errs <- fmt.Errorf("process %d: end %v", i, r.end)
			}
		})
	}

	// An orphan: the shell exits, its background child is re-parented to us
	// and must be reaped when it exits.
	r := h.mustRun(t, startReq("sh", "-c", "sleep 0.2 >/dev/null 2>&1 & echo $!"))
	orphan, err := strconv.Atoi(strings.TrimSpace(r.stdout.String()))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", r.stdout.String(), err)
	}
	testutil.Eventually(t, testutil.Short, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
		return err != nil
	}, "orphan was not reaped")
	runs.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBacklog(t *testing.T) {
	out := func(s string) chunk { return chunk{kind: kindStdout, data: []byte(s)} }
	errc := func(s string) chunk { return chunk{kind: kindStderr, data: []byte(s)} }
	tests := []struct {
		name  string
		limit int
		add   []chunk
		want  []chunk
	}{
		{"merges a stream", 100, []chunk{out("a"), out("b"), out("c")}, []chunk{out("abc")}},
		{"keeps stream boundaries", 100, []chunk{out("a"), errc("b"), out("c")}, []chunk{out("a"), errc("b"), out("c")}},
		{"drops oldest", 4, []chunk{out("ab"), errc("cd"), out("ef")}, []chunk{errc("cd"), out("ef")}},
		{"trims partially", 3, []chunk{out("ab"), errc("cd")}, []chunk{out("b"), errc("cd")}},
		{"huge chunk keeps its tail", 3, []chunk{out("abcdef")}, []chunk{out("def")}},
		{"disabled", 0, []chunk{out("a")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := backlog{limit: tt.limit}
			for _, c := range tt.add {
				b.add(c)
			}
			got := b.take()
			if !slices.EqualFunc(got, tt.want, func(a, b chunk) bool { return a.kind == b.kind && bytes.Equal(a.data, b.data) }) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			if b.size != 0 || b.chunks != nil {
				t.Fatal("take did not empty the backlog")
			}
		})
	}
}

func TestLateReaderKeepsOutput(t *testing.T) {
	// A reader that runs only after its drain deadline passed must still
	// forward the output waiting in the pipe (the process wrote it before
	// exiting).
	r, w, err := pipe(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.Close()
		_ = w.Close()
	})
	if _, err := w.Write([]byte("written before exit")); err != nil {
		t.Fatal(err)
	}
	p := &proc{hub: newHub(DefaultSubBuffer, DefaultSubBytes, DefaultBacklog, time.Second)}
	sub, _ := p.hub.subscribe()
	p.drainUntil = time.Now().Add(-time.Second)
	p.exited.Store(true)
	p.read(output{f: r, kind: kindStdout}, tuning{readChunk: DefaultReadChunk, drainIdle: time.Millisecond, drainMax: time.Millisecond})
	select {
	case c := <-sub.ch:
		if got := string(c.data); got != "written before exit" {
			t.Fatalf("forwarded %q", got)
		}
	default:
		t.Fatal("output waiting in the pipe was lost after the drain deadline")
	}
}

func TestHubStallKeepsOutputInOrder(t *testing.T) {
	h := newHub(2, DefaultSubBytes, DefaultBacklog, 10*time.Millisecond)
	sub, _ := h.subscribe()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for _, s := range []string{"a", "b", "c"} {
		h.publish(chunk{kind: kindStdout, data: []byte(s)}, timer)
	}
	// "c" found the only subscriber full for the stall timeout: it was
	// dropped, and what it had queued plus "c" wait for the next one.
	select {
	case <-sub.dropped:
	default:
		t.Fatal("stalled subscriber was not dropped")
	}
	if !errors.Is(sub.err, errSlowSubscriber) {
		t.Fatalf("drop reason %v", sub.err)
	}
	next, replay := h.subscribe()
	if len(replay) != 1 || string(replay[0].data) != "abc" {
		t.Fatalf("replay = %v, want one chunk \"abc\"", replay)
	}
	h.publish(chunk{kind: kindStdout, data: []byte("d")}, timer)
	if got := string((<-next.ch).data); got != "d" {
		t.Fatalf("live output after replay = %q", got)
	}
}

func TestPooledBufferReleasedByLastHolder(t *testing.T) {
	h := newHub(DefaultSubBuffer, DefaultSubBytes, DefaultBacklog, time.Second)
	a, _ := h.subscribe()
	b, _ := h.subscribe()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	pool := newBufPool()
	ob := pool.get(8)
	copy(ob.b, "abcdefgh")
	c := chunk{kind: kindStdout, data: ob.b, buf: ob}
	h.publish(c, timer)
	c.release() // the reader's own reference

	(<-a.ch).release()
	if got := pool.get(8); got == ob {
		t.Fatal("buffer handed out again while a subscriber still holds it")
	}
	got := <-b.ch
	if string(got.data) != "abcdefgh" {
		t.Fatalf("second subscriber got %q", got.data)
	}
	got.release()
	if again := pool.get(8); again != ob {
		t.Fatal("buffer did not return to its pool after the last release")
	}
}

func TestLeavingSubscriberHandsPooledOutputToBacklog(t *testing.T) {
	h := newHub(DefaultSubBuffer, DefaultSubBytes, DefaultBacklog, time.Second)
	sub, _ := h.subscribe()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	pool := newBufPool()
	ob := pool.get(5)
	copy(ob.b, "queue")
	c := chunk{kind: kindStdout, data: ob.b, buf: ob}
	h.publish(c, timer)
	c.release()

	// The only subscriber leaves with the chunk still queued: the backlog
	// keeps a copy and the buffer returns to the reader, which reuses it.
	h.unsubscribe(sub)
	reused := pool.get(5)
	if reused != ob {
		t.Fatal("buffer of a chunk moved to the backlog was not released")
	}
	copy(reused.b, "XXXXX")
	_, replay := h.subscribe()
	if len(replay) != 1 || string(replay[0].data) != "queue" {
		t.Fatalf("replay = %v, want one chunk \"queue\"", replay)
	}
}

func TestFanOutKeepsEveryByte(t *testing.T) {
	// Output buffers are recycled once every subscriber has sent them; two
	// subscribers reading at their own pace must both get every byte.
	h := newHarness(t, fast)
	ctx := testutil.Context(t, testutil.Long)
	lines := 400000
	if testing.Short() {
		lines = 50000
	}
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		want.WriteString(strconv.Itoa(i) + "\n")
	}
	req := startReq("sh", "-c", `read x; seq 1 "$1"`, "sh", strconv.Itoa(lines))
	other, otherTr := h.newClient(connect.WithAcceptCompression("gzip", nil, nil))
	t.Cleanup(otherTr.CloseIdleConnections)
	first, firstRes := h.started(ctx, t, h.client, connect.NewRequest(req))
	second, secondRes := connected(ctx, t, other, byPID(firstRes.pid))
	h.send(t, byPID(firstRes.pid), stdinInput("\n"))

	var wg sync.WaitGroup
	wg.Go(func() {
		rest, err := drain(first)
		if err != nil {
			t.Errorf("start stream: %v", err)
			return
		}
		firstRes.stdout.Write(rest.stdout.Bytes())
	})
	rest, err := drain(second)
	if err != nil {
		t.Fatalf("connect stream: %v", err)
	}
	secondRes.stdout.Write(rest.stdout.Bytes())
	wg.Wait()
	for name, r := range map[string]*result{"start": firstRes, "connect": secondRes} {
		if r.stdout.String() != want.String() {
			t.Errorf("%s stream: output differs from what seq wrote (got %d bytes, want %d)", name, r.stdout.Len(), want.Len())
		}
	}
}

// TestBulkOutputMovesInLargeMessages: a producer writing 8 KiB at a time,
// fast but no faster than the reader keeps up with (`yes | head` in a
// capsule), reaches subscribers in messages of many writes, not one message
// per write, and every byte arrives in order (issue 21: each message costs
// every hop after envd). Without the pause after mid-sized reads the
// messages averaged the write size.
func TestBulkOutputMovesInLargeMessages(t *testing.T) {
	r, w, err := pipe(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	const writes, size = 1500, 8 << 10
	go func() {
		defer w.Close()
		b := make([]byte, size)
		for i := range writes {
			for j := range b {
				b[j] = byte(i)
			}
			if _, err := w.Write(b); err != nil {
				return
			}
			// ≈ 300 MiB/s: a spin, as a sleep this short oversleeps.
			for t0 := time.Now(); time.Since(t0) < 25*time.Microsecond; {
			}
		}
	}()
	p := &proc{hub: newHub(DefaultSubBuffer, DefaultSubBytes, DefaultBacklog, time.Second)}
	sub, _ := p.hub.subscribe()
	got := make(chan []int, 1)
	go func() {
		var sizes []int
		var want byte
		off := 0
		for c := range sub.ch {
			sub.taken(c)
			p.hub.freed()
			for _, b := range c.data {
				if b != want {
					t.Errorf("byte %d is %d, want %d: output reordered or lost", off, b, want)
					got <- sizes
					return
				}
				off++
				if off%size == 0 {
					want++
				}
			}
			sizes = append(sizes, len(c.data))
			c.release()
			if off == writes*size {
				got <- sizes
				return
			}
		}
	}()
	p.read(output{f: r, kind: kindStdout}, tuning{readChunk: DefaultReadChunk, bulkWait: bulkWait, drainIdle: time.Second, drainMax: time.Second})
	var sizes []int
	select {
	case sizes = <-got:
	case <-time.After(testutil.Long):
		t.Fatal("not all output arrived")
	}
	total := 0
	for _, n := range sizes {
		total += n
	}
	if total != writes*size {
		t.Fatalf("%d bytes of %d", total, writes*size)
	}
	if avg := total / len(sizes); avg < 2*size {
		t.Fatalf("%d messages of %d bytes on average; want at least 2 writes (%d bytes) per message for bulk output", len(sizes), avg, 2*size)
	}
	t.Logf("%d messages, %d KiB on average", len(sizes), total/len(sizes)>>10)
}

// TestSmallOutputIsNotDelayed: a short write is sent at once (the bulk
// pause applies only after reads of bulkRead bytes or more).
func TestSmallOutputIsNotDelayed(t *testing.T) {
	h := newHarness(t)
	ctx := testutil.Context(t, testutil.Long)
	stream, r := h.started(ctx, t, h.client, connect.NewRequest(startReq("sh", "-c", "echo hi; sleep 5")))
	began := time.Now()
	until(t, stream, r, func(r *result) bool { return r.stdout.Len() > 0 })
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("first line after %v", d)
	}
	_ = stream.Close()
}

// TestBatchedEventsOverEveryProtocol: a short process's events, batched
// into few flushes, arrive complete and in order (start, output, end), and
// the stream then ends cleanly (the end of stream, trailers in gRPC, are
// flushed when the handler returns), over the Connect protocol, gRPC and
// gRPC-Web, HTTP/2 and HTTP/1.1; a failing Start still answers its error.
func TestBatchedEventsOverEveryProtocol(t *testing.T) {
	h := newHarness(t)
	ctx := testutil.Context(t, testutil.Long)
	h1 := &http.Transport{}
	t.Cleanup(h1.CloseIdleConnections)
	clients := map[string]processconnect.ProcessClient{
		"connect h2":  h.client,
		"connect h1":  processconnect.NewProcessClient(&http.Client{Transport: h1}, h.srv.URL),
		"grpc h2":     processconnect.NewProcessClient(&http.Client{Transport: h.tr}, h.srv.URL, connect.WithGRPC()),
		"grpc-web h1": processconnect.NewProcessClient(&http.Client{Transport: h1}, h.srv.URL, connect.WithGRPCWeb()),
		"grpc-web h2": processconnect.NewProcessClient(&http.Client{Transport: h.tr}, h.srv.URL, connect.WithGRPCWeb()),
	}
	for name, client := range clients {
		t.Run(name, func(t *testing.T) {
			stream, err := client.Start(ctx, connect.NewRequest(startReq("sh", "-c", "echo out; echo err >&2; exit 3")))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = stream.Close() }()
			var kinds []string
			r := &result{}
			for stream.Receive() {
				ev := stream.Msg().GetEvent()
				switch ev.GetEvent().(type) {
				case *pb.ProcessEvent_Start:
					kinds = append(kinds, "start")
				case *pb.ProcessEvent_Data:
					kinds = append(kinds, "data")
				case *pb.ProcessEvent_End:
					kinds = append(kinds, "end")
				}
				r.add(ev)
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("stream error after %v: %v", kinds, err)
			}
			if len(kinds) < 3 || kinds[0] != "start" || kinds[len(kinds)-1] != "end" || slices.Contains(kinds[1:len(kinds)-1], "start") || slices.Contains(kinds[1:len(kinds)-1], "end") {
				t.Fatalf("events %v", kinds)
			}
			if r.pid == 0 || r.stdout.String() != "out\n" || r.stderr.String() != "err\n" || r.end.GetExitCode() != 3 || !r.end.GetExited() {
				t.Fatalf("pid %d stdout %q stderr %q end %v", r.pid, r.stdout.String(), r.stderr.String(), r.end)
			}

			bad, err := client.Start(ctx, connect.NewRequest(startReq("/no/such/binary")))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = bad.Close() }()
			for bad.Receive() {
				t.Fatalf("event from a failed start: %v", bad.Msg())
			}
			if connect.CodeOf(bad.Err()) != connect.CodeNotFound {
				t.Fatalf("failed start: %v, want not_found", bad.Err())
			}
		})
	}
}

// TestPipeBlockingEnds: the parent's end of a pipe is nonblocking (Go's
// poller serves it), the child's is blocking (programs expect it), both
// close on exec.
func TestPipeBlockingEnds(t *testing.T) {
	for _, parentReads := range []bool{true, false} {
		r, w, err := pipe(parentReads)
		if err != nil {
			t.Fatal(err)
		}
		parent, child := r, w
		if !parentReads {
			parent, child = w, r
		}
		for _, c := range []struct {
			f        *os.File
			nonblock bool
		}{{parent, true}, {child, false}} {
			rc, err := c.f.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var fl, fdfl int
			_ = rc.Control(func(fd uintptr) {
				fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
				fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
			})
			if got := fl&unix.O_NONBLOCK != 0; got != c.nonblock || fdfl&unix.FD_CLOEXEC == 0 {
				t.Errorf("parentReads=%v %s: nonblocking %v (want %v), fd flags %#x", parentReads, c.f.Name(), got, c.nonblock, fdfl)
			}
		}
		_ = r.Close()
		_ = w.Close()
	}
}
