package wrenn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

func client(t *testing.T) *wrenn.Client {
	t.Helper()
	c, err := wrenn.New(wrennURL, wrennKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCapsule creates a minimal capsule removed when the test ends.
func newCapsule(t *testing.T, c *wrenn.Client) *wrenn.Capsule {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal", Env: map[string]string{"GREETING": "hej"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Long)
		defer cancel()
		if err := c.Delete(ctx, capsule.ID); err != nil && !wrenn.IsNotFound(err) {
			t.Errorf("Delete %s: %v", capsule.ID, err)
		}
	})
	return capsule
}

func TestCapsuleLifecycle(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	if capsule.Status != wrenn.StatusRunning || !strings.HasPrefix(capsule.ID, "cl-") || capsule.AccessToken == "" {
		t.Fatalf("Create returned %+v; want a running cl-… capsule with an access token", capsule)
	}

	got, err := c.Get(ctx, capsule.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != capsule.ID || got.MemoryMB != 512 || got.VCPUs != 1 || got.AccessToken != "" || !got.AllowInternet || got.ErrorReason != "" {
		t.Errorf("Get = %+v; want the capsule with defaults (internet on) and no access token", got)
	}
	all, err := c.List(ctx, wrenn.StatusRunning)
	if err != nil {
		t.Fatal(err)
	}
	if !containsID(all, capsule.ID) {
		t.Errorf("List(running) does not contain %s", capsule.ID)
	}

	res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "sh", Args: []string{"-c", "echo $GREETING; echo oops >&2; exit 5"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "hej\n" || res.Stderr != "oops\n" || res.ExitCode != 5 {
		t.Errorf("Exec = %+v; want stdout hej, stderr oops, exit 5", res)
	}

	upd, err := c.SetTimeout(ctx, capsule.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if upd.TimeoutSec != 3600 || upd.ExpiresAt == nil || time.Until(*upd.ExpiresAt) < 50*time.Minute {
		t.Errorf("SetTimeout = %+v; want 3600 s from now", upd)
	}

	p, err := c.Pause(ctx, capsule.ID, wrenn.PauseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != wrenn.StatusPaused {
		t.Errorf("Pause status = %s", p.Status)
	}
	if _, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "true"}); wrenn.ErrorCode(err) != wrenn.CodeConflict {
		t.Errorf("Exec on a paused capsule: err = %v; want conflict", err)
	}
	r, err := c.Resume(ctx, capsule.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != wrenn.StatusRunning {
		t.Errorf("Resume status = %s", r.Status)
	}
	res, err = c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"back"}})
	if err != nil || res.Stdout != "back\n" {
		t.Fatalf("Exec after resume = %+v, %v", res, err)
	}

	if err := c.Kill(ctx, capsule.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, capsule.ID); !wrenn.IsNotFound(err) {
		t.Errorf("Get after Kill: err = %v; want not_found", err)
	}
}

func containsID(caps []wrenn.Capsule, id string) bool {
	for _, c := range caps {
		if c.ID == id {
			return true
		}
	}
	return false
}

func TestExecStreamIsLive(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	// The first line must arrive while the command still sleeps.
	first := make(chan time.Time, 1)
	var stdout, stderr bytes.Buffer
	w := writerFunc(func(b []byte) (int, error) {
		select {
		case first <- time.Now():
		default:
		}
		return stdout.Write(b)
	})
	start := time.Now()
	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{
		Cmd: "sh", Args: []string{"-c", "echo early; echo warn >&2; sleep 2; echo late; exit 7"},
	}, w, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	if got := stdout.String(); got != "early\nlate\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := stderr.String(); got != "warn\n" {
		t.Errorf("stderr = %q", got)
	}
	if st.ExitCode != 7 {
		t.Errorf("exit code = %d; want 7", st.ExitCode)
	}
	if at := <-first; end.Sub(at) < time.Second {
		t.Errorf("first output came %v after start and %v before the end: not streamed", at.Sub(start), end.Sub(at))
	}
}

func TestExecStreamIsBinarySafe(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	// Every byte value, twice, and a lone UTF-8 lead byte at the end.
	var want bytes.Buffer
	for range 2 {
		for b := range 256 {
			want.WriteByte(byte(b))
		}
	}
	want.WriteByte(0xe2)
	var printf strings.Builder
	for _, b := range want.Bytes() {
		fmt.Fprintf(&printf, "\\%03o", b)
	}
	var stdout bytes.Buffer
	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{
		Cmd: "sh", Args: []string{"-c", "printf '" + printf.String() + "'"},
	}, &stdout, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || !bytes.Equal(stdout.Bytes(), want.Bytes()) {
		t.Fatalf("exit %d; got %d bytes, want the %d bytes written (binary output mangled)", st.ExitCode, stdout.Len(), want.Len())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestFilesStreamed(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	size := int64(32 << 20)
	if testing.Short() {
		size = 2 << 20
	}
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.Reader, size), h)
	if _, err := c.Files.Write(ctx, capsule.ID, "/tmp/deep/dir/blob", src); err != nil {
		t.Fatal(err)
	}
	want := h.Sum(nil)
	st, err := c.Files.Stat(ctx, capsule.ID, "/tmp/deep/dir/blob")
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Type != "file" {
		t.Errorf("Stat = %+v; want a file of %d bytes", st, size)
	}
	h2 := sha256.New()
	n, err := c.Files.Read(ctx, capsule.ID, "/tmp/deep/dir/blob", h2)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h2.Sum(nil), want) {
		t.Errorf("read back %d bytes with a different hash; want %d identical bytes", n, size)
	}
	created, err := c.Files.MakeDir(ctx, capsule.ID, "/tmp/made/here")
	if err != nil || !created {
		t.Errorf("MakeDir = %v, %v; want created", created, err)
	}
	entries, err := c.Files.List(ctx, capsule.ID, "/tmp", 1)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, e := range entries {
		names[e.Name] = e.Type
	}
	if names["deep"] != "dir" || names["made"] != "dir" {
		t.Errorf("List(/tmp) = %v; want deep and made directories", names)
	}
	if err := c.Files.Remove(ctx, capsule.ID, "/tmp/deep"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Files.Read(ctx, capsule.ID, "/tmp/deep/dir/blob", io.Discard); !wrenn.IsNotFound(err) {
		t.Errorf("Read after Remove: err = %v; want not_found", err)
	}
}

func TestPTY(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	pty, err := c.OpenPTY(ctx, capsule.ID, wrenn.PTYOptions{Cols: 80, Rows: 24, Cmd: "/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	defer pty.Close()
	if err := pty.Resize(101, 33); err != nil {
		t.Fatal(err)
	}
	// Give the resize a moment to land before stty reads the size.
	go func() {
		time.Sleep(500 * time.Millisecond)
		_, _ = io.WriteString(pty, "stty size; echo $((6*7)); tty; exit 3\n")
	}()
	out, err := io.ReadAll(pty)
	if err != nil {
		t.Fatalf("read: %v (output %q)", err, out)
	}
	for _, want := range []string{"33 101", "42", "/dev/pts/"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("terminal output %q lacks %q", out, want)
		}
	}
	st := pty.ExitStatus()
	if st == nil || st.ExitCode != 3 {
		t.Errorf("ExitStatus = %+v; want exit code 3", st)
	}
}

func TestBackgroundProcess(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	pid, err := c.StartProcess(ctx, capsule.ID, wrenn.ProcessRequest{
		ExecRequest: wrenn.ExecRequest{Cmd: "sh", Args: []string{"-c", "sleep 2; echo finished; exit 4"}}, Tag: "job",
	})
	if err != nil {
		t.Fatal(err)
	}
	procs, err := c.Processes(ctx, capsule.ID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range procs {
		found = found || (p.PID == pid && p.Tag == "job")
	}
	if !found {
		t.Errorf("Processes = %+v; want pid %d tagged job", procs, pid)
	}
	var out bytes.Buffer
	st, err := c.AttachProcess(ctx, capsule.ID, pid, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "finished\n" || st.ExitCode != 4 {
		t.Errorf("attached output %q exit %d; want finished, 4", out.String(), st.ExitCode)
	}
}

func TestErrors(t *testing.T) {
	ctx := testutil.Context(t, testutil.Short)
	bad, _ := wrenn.New(wrennURL, "wrn_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	if _, err := bad.List(ctx, ""); !wrenn.IsUnauthenticated(err) {
		t.Errorf("bad key: err = %v; want unauthenticated", err)
	}
	c := client(t)
	_, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal", MemoryMB: 1})
	var apiErr *wrenn.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Code != wrenn.CodeInvalidArgument || !strings.Contains(apiErr.Message, "memory_mb") {
		t.Errorf("memory 1 MB: err = %#v; want 400 invalid_argument about memory_mb", err)
	}
	if _, err := c.Create(ctx, wrenn.CreateParams{Template: "no-such-template"}); !wrenn.IsNotFound(err) {
		t.Errorf("unknown template: err = %v; want not_found", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	gone, _ := wrenn.New("http://"+addr, wrennKey)
	var ce *wrenn.ConnectionError
	if _, err := gone.Me(ctx); !errors.As(err, &ce) || ce.URL != "http://"+addr {
		t.Errorf("stopped server: err = %v; want a ConnectionError for http://%s", err, addr)
	}
	if _, err := gone.ExecStream(ctx, "cl-x", wrenn.ExecRequest{Cmd: "true"}, nil, nil); !errors.As(err, &ce) {
		t.Errorf("stopped server, stream: err = %v; want a ConnectionError", err)
	}
	if _, err := wrenn.New("ftp://x", ""); err == nil {
		t.Error("New accepted an ftp:// URL")
	}
}

func TestMe(t *testing.T) {
	ctx := testutil.Context(t, testutil.Short)
	me, err := client(t).Me(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if me.Email != "admin@localhost" || !me.IsAdmin || me.Auth != "api_key" {
		t.Errorf("Me = %+v; want the admin, by API key", me)
	}
	ts, err := client(t).Templates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tpl := range ts {
		names = append(names, tpl.Name)
	}
	if !strings.Contains(strings.Join(names, ","), "minimal") {
		t.Errorf("Templates = %v; want minimal", names)
	}
}
