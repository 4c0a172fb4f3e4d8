package filesystem_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type env struct {
	svc    *filesystem.Service
	client filesystemconnect.FilesystemClient
	// user, when set, is sent as the Basic-auth username on every call.
	user string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := filesystem.NewService(logger, defaults.New(""))
	mux := http.NewServeMux()
	mux.Handle(filesystemconnect.NewFilesystemHandler(svc))
	srv := httptest.NewServer(mux)
	e := &env{svc: svc}
	e.client = filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL, connect.WithInterceptors(connect.UnaryInterceptorFunc(
		func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				e.setAuth(req.Header())
				return next(ctx, req)
			}
		})))
	t.Cleanup(func() {
		svc.Close()
		srv.CloseClientConnections()
		srv.Close()
	})
	return e
}

func (e *env) setAuth(h http.Header) {
	if e.user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(e.user+":")))
	}
}

func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolvePath(t *testing.T) {
	const home = "/home/user"
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "file.txt", want: "/home/user/file.txt"},
		{in: "a/../b", want: "/home/user/b"},
		{in: "../../etc/passwd", want: "/etc/passwd"},
		{in: "/tmp//x/./y/", want: "/tmp/x/y"},
		{in: "/../..", want: "/"},
		{in: "~", want: home},
		{in: "~/docs/../x", want: "/home/user/x"},
		{in: "./~x", want: "/home/user/~x"},
		{in: "dir%2F..%2Fx", want: "/home/user/dir%2F..%2Fx"},
		{in: "", wantErr: true},
		{in: "~root/x", wantErr: true},
		{in: "a\x00b", wantErr: true},
		{in: "bad\xffutf8", wantErr: true},
		{in: "/" + strings.Repeat("a", filesystem.MaxPathLen), wantErr: true},
		{in: strings.Repeat("a/", filesystem.MaxPathLen/2-2), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(strconv.Quote(tc.in[:min(len(tc.in), 30)]), func(t *testing.T) {
			got, err := filesystem.ResolvePath(tc.in, home)
			if tc.wantErr {
				if !errors.Is(err, filesystem.ErrInvalidPath) {
					t.Fatalf("ResolvePath(%q) = %q, %v; want ErrInvalidPath", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ResolvePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzResolvePath(f *testing.F) {
	for _, s := range []string{"x", "~", "~/a", "~b", "../../..", "/a/./b//c/", "a\x00", "%2e%2e/x", "\xff", strings.Repeat("../", 1400)} {
		f.Add(s, "/home/user")
	}
	f.Add("rel", "")
	f.Fuzz(func(t *testing.T, p, home string) {
		got, err := filesystem.ResolvePath(p, home)
		if err != nil {
			if !errors.Is(err, filesystem.ErrInvalidPath) {
				t.Fatalf("error %v is not ErrInvalidPath", err)
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("ResolvePath(%q, %q) = %q: not absolute and clean", p, home, got)
		}
		if len(got) > filesystem.MaxPathLen || strings.IndexByte(got, 0) >= 0 {
			t.Fatalf("ResolvePath(%q, %q) = %q: too long or contains NUL", p, home, got)
		}
		if p == "" || strings.IndexByte(p, 0) >= 0 || len(p) > filesystem.MaxPathLen {
			t.Fatalf("ResolvePath accepted %q", p)
		}
		if filepath.IsAbs(p) && got != filepath.Clean(p) {
			t.Fatalf("absolute %q resolved to %q", p, got)
		}
	})
}

func TestPermString(t *testing.T) {
	tests := []struct {
		mode uint32
		want string
	}{
		{unix.S_IFREG | 0o644, "-rw-r--r--"},
		{unix.S_IFDIR | 0o755, "drwxr-xr-x"},
		{unix.S_IFLNK | 0o777, "lrwxrwxrwx"},
		{unix.S_IFDIR | 0o1777, "drwxrwxrwt"},
		{unix.S_IFREG | 0o4755, "-rwsr-xr-x"},
		{unix.S_IFREG | 0o2644, "-rw-r-Sr--"},
		{unix.S_IFIFO | 0o600, "prw-------"},
	}
	for _, tc := range tests {
		if got := filesystem.PermString(tc.mode); got != tc.want {
			t.Errorf("PermString(%o) = %q, want %q", tc.mode, got, tc.want)
		}
	}
}

func TestStat(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	file := filepath.Join(dir, "f.txt")
	writeFile(t, file, "hello")
	if err := unix.Setxattr(file, "user.e2b.color", []byte("blue"), 0); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("f.txt", link); err != nil {
		t.Fatal(err)
	}

	t.Run("file", func(t *testing.T) {
		res, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: file}))
		if err != nil {
			t.Fatal(err)
		}
		got := res.Msg.GetEntry()
		if got.GetName() != "f.txt" || got.GetPath() != file || got.GetType() != pb.FileType_FILE_TYPE_FILE ||
			got.GetSize() != 5 || got.GetMode() != 0o644 || got.GetPermissions() != "-rw-r--r--" {
			t.Fatalf("entry = %v", got)
		}
		if got.GetOwner() != "root" && os.Geteuid() == 0 {
			t.Errorf("owner = %q, want root", got.GetOwner())
		}
		if got.GetMetadata()["color"] != "blue" {
			t.Errorf("metadata = %v, want color=blue", got.GetMetadata())
		}
		if d := time.Since(got.GetModifiedTime().AsTime()); d < 0 || d > time.Minute {
			t.Errorf("modified_time %v is not recent", got.GetModifiedTime().AsTime())
		}
	})
	t.Run("symlink", func(t *testing.T) {
		res, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: link}))
		if err != nil {
			t.Fatal(err)
		}
		got := res.Msg.GetEntry()
		if got.GetType() != pb.FileType_FILE_TYPE_SYMLINK || got.GetSymlinkTarget() != "f.txt" || got.GetPermissions()[0] != 'l' {
			t.Fatalf("entry = %v", got)
		}
	})
	t.Run("dir", func(t *testing.T) {
		res, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: dir + "/."}))
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Msg.GetEntry(); got.GetType() != pb.FileType_FILE_TYPE_DIRECTORY || got.GetPath() != dir {
			t.Fatalf("entry = %v", got)
		}
	})
	errs := []struct {
		name, path string
		want       connect.Code
	}{
		{"missing", filepath.Join(dir, "nope"), connect.CodeNotFound},
		{"empty", "", connect.CodeInvalidArgument},
		{"nul", dir + "/a\x00b", connect.CodeInvalidArgument},
		{"huge", "/" + strings.Repeat("x", 5000), connect.CodeInvalidArgument},
		{"through file", file + "/x", connect.CodeInvalidArgument},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: tc.path}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	t.Run("unknown user", func(t *testing.T) {
		e.user = "no-such-user-wrenn"
		defer func() { e.user = "" }()
		_, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: file}))
		if got := codeOf(err); got != connect.CodeUnauthenticated {
			t.Fatalf("code = %v (%v), want Unauthenticated", got, err)
		}
	})
}

func TestMakeDir(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	nested := filepath.Join(dir, "a", "b", "c")
	res, err := e.client.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: nested}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetEntry().GetType() != pb.FileType_FILE_TYPE_DIRECTORY || res.Msg.GetEntry().GetPath() != nested {
		t.Fatalf("entry = %v", res.Msg.GetEntry())
	}
	if st, err := os.Stat(nested); err != nil || !st.IsDir() {
		t.Fatalf("stat %s: %v", nested, err)
	}
	writeFile(t, filepath.Join(dir, "file"), "x")
	tests := []struct {
		name, path string
		want       connect.Code
	}{
		{"exists", nested, connect.CodeAlreadyExists},
		{"file exists", filepath.Join(dir, "file"), connect.CodeAlreadyExists},
		{"parent is file", filepath.Join(dir, "file", "sub"), connect.CodeInvalidArgument},
		{"empty", "", connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: tc.path}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestMove(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.txt")
	writeFile(t, src, "data")
	dst := filepath.Join(dir, "new", "parent", "dst.txt")
	res, err := e.client.Move(ctx, connect.NewRequest(&pb.MoveRequest{Source: src, Destination: dst}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetEntry().GetPath() != dst || res.Msg.GetEntry().GetSize() != 4 {
		t.Fatalf("entry = %v", res.Msg.GetEntry())
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("source still exists: %v", err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "data" {
		t.Fatalf("dst = %q, %v", b, err)
	}
	full := filepath.Join(dir, "full")
	writeFile(t, filepath.Join(full, "x"), "x")
	other := filepath.Join(dir, "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, src, dst string
		want           connect.Code
	}{
		{"missing source", filepath.Join(dir, "nope"), filepath.Join(dir, "y"), connect.CodeNotFound},
		{"onto non-empty dir", other, full, connect.CodeAlreadyExists},
		{"root", "/", filepath.Join(dir, "root"), connect.CodeInvalidArgument},
		{"empty destination", dst, "", connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.Move(ctx, connect.NewRequest(&pb.MoveRequest{Source: tc.src, Destination: tc.dst}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestListDir(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	for _, p := range []string{"a/b/c/d.txt", "a/b/c.txt", "a/x.txt", "top.txt"} {
		writeFile(t, filepath.Join(dir, p), p)
	}
	// A symlink to a directory is listed but never descended into.
	if err := os.Symlink(filepath.Join(dir, "a"), filepath.Join(dir, "loop")); err != nil {
		t.Fatal(err)
	}
	rel := func(entries []*pb.EntryInfo) []string {
		var out []string
		for _, en := range entries {
			r, _ := filepath.Rel(dir, en.GetPath())
			out = append(out, r)
		}
		slices.Sort(out)
		return out
	}
	tests := []struct {
		depth uint32
		want  []string
	}{
		{0, []string{"a", "loop", "top.txt"}},
		{1, []string{"a", "loop", "top.txt"}},
		{2, []string{"a", "a/b", "a/x.txt", "loop", "top.txt"}},
		{3, []string{"a", "a/b", "a/b/c", "a/b/c.txt", "a/x.txt", "loop", "top.txt"}},
		{100, []string{"a", "a/b", "a/b/c", "a/b/c.txt", "a/b/c/d.txt", "a/x.txt", "loop", "top.txt"}},
	}
	for _, tc := range tests {
		t.Run("depth "+strconv.Itoa(int(tc.depth)), func(t *testing.T) {
			res, err := e.client.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: dir, Depth: tc.depth}))
			if err != nil {
				t.Fatal(err)
			}
			if got := rel(res.Msg.GetEntries()); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("symlinked dir as root is followed", func(t *testing.T) {
		res, err := e.client.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: filepath.Join(dir, "loop")}))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(res.Msg.GetEntries()); got != 2 {
			t.Fatalf("got %d entries, want 2", got)
		}
	})
	errs := []struct {
		name, path string
		want       connect.Code
	}{
		{"missing", filepath.Join(dir, "nope"), connect.CodeNotFound},
		{"file", filepath.Join(dir, "top.txt"), connect.CodeInvalidArgument},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: tc.path}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeFile(t, filepath.Join(tree, "a/b/c.txt"), "x")
	file := filepath.Join(dir, "f")
	writeFile(t, file, "x")
	for _, p := range []string{tree, file} {
		if _, err := e.client.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: p})); err != nil {
			t.Fatalf("remove %s: %v", p, err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still exists: %v", p, err)
		}
	}
	errs := []struct {
		name, path string
		want       connect.Code
	}{
		{"missing", file, connect.CodeNotFound},
		{"root", "/", connect.CodeInvalidArgument},
		{"empty", "", connect.CodeInvalidArgument},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: tc.path}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func hasEvent(events []*pb.FilesystemEvent, name string, typ pb.EventType) bool {
	return slices.ContainsFunc(events, func(ev *pb.FilesystemEvent) bool {
		return ev.GetName() == name && ev.GetType() == typ
	})
}

func TestWatchDirStream(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pre"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Long)
	defer cancel()
	req := connect.NewRequest(&pb.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true})
	req.Header().Set("Keepalive-Ping-Interval", "1")
	stream, err := e.client.WatchDir(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	if !stream.Receive() {
		t.Fatalf("no start event: %v", stream.Err())
	}
	if stream.Msg().GetStart() == nil {
		t.Fatalf("first message %v is not a start event", stream.Msg())
	}

	events := make(chan *pb.WatchDirResponse, 1024)
	go func() {
		defer close(events)
		for stream.Receive() {
			events <- stream.Msg()
		}
	}()
	var got []*pb.FilesystemEvent
	keepalives := 0
	waitFor := func(name string, typ pb.EventType) *pb.FilesystemEvent {
		t.Helper()
		deadline := time.After(testutil.Short)
		for {
			for _, ev := range got {
				if ev.GetName() == name && ev.GetType() == typ {
					return ev
				}
			}
			select {
			case m, ok := <-events:
				if !ok {
					t.Fatalf("stream ended waiting for %v %q: %v", typ, name, stream.Err())
				}
				if m.GetKeepalive() != nil {
					keepalives++
				}
				if fe := m.GetFilesystem(); fe != nil {
					got = append(got, fe)
				}
			case <-deadline:
				t.Fatalf("no %v event for %q; got %v", typ, name, got)
			}
		}
	}

	f := filepath.Join(dir, "a.txt")
	writeFile(t, f, "1")
	ev := waitFor("a.txt", pb.EventType_EVENT_TYPE_CREATE)
	if ev.GetEntry().GetPath() != f {
		t.Errorf("create event entry = %v, want path %s", ev.GetEntry(), f)
	}
	waitFor("a.txt", pb.EventType_EVENT_TYPE_WRITE)
	if err := os.Chmod(f, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("a.txt", pb.EventType_EVENT_TYPE_CHMOD)
	if err := os.Rename(f, filepath.Join(dir, "b.txt")); err != nil {
		t.Fatal(err)
	}
	waitFor("a.txt", pb.EventType_EVENT_TYPE_RENAME)
	waitFor("b.txt", pb.EventType_EVENT_TYPE_CREATE)
	if err := os.Remove(filepath.Join(dir, "b.txt")); err != nil {
		t.Fatal(err)
	}
	waitFor("b.txt", pb.EventType_EVENT_TYPE_REMOVE)
	// Recursive: a directory that existed before and one created later.
	writeFile(t, filepath.Join(dir, "pre", "p.txt"), "p")
	waitFor("pre/p.txt", pb.EventType_EVENT_TYPE_CREATE)
	if err := os.Mkdir(filepath.Join(dir, "later"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor("later", pb.EventType_EVENT_TYPE_CREATE)
	writeFile(t, filepath.Join(dir, "later", "l.txt"), "l")
	waitFor("later/l.txt", pb.EventType_EVENT_TYPE_CREATE)
	// Keepalives arrive at the interval the client asked for.
	deadline := time.After(testutil.Short)
	for keepalives == 0 {
		select {
		case m, ok := <-events:
			if !ok {
				t.Fatalf("stream ended: %v", stream.Err())
			}
			if m.GetKeepalive() != nil {
				keepalives++
			}
		case <-deadline:
			t.Fatal("no keepalive within 10s at a 1s interval")
		}
	}
	cancel()
	for range events { //nolint:revive // drain until the reader goroutine exits
	}
}

func TestWatchDirErrors(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	writeFile(t, file, "x")
	tests := []struct {
		name, path string
		want       connect.Code
	}{
		{"missing", filepath.Join(dir, "nope"), connect.CodeNotFound},
		{"file", file, connect.CodeInvalidArgument},
		{"nul", "a\x00", connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := e.client.WatchDir(ctx, connect.NewRequest(&pb.WatchDirRequest{Path: tc.path}))
			if err == nil {
				for stream.Receive() {
					t.Fatalf("unexpected message %v", stream.Msg())
				}
				err = stream.Err()
				_ = stream.Close()
			}
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.want)
			}
			_, err = e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: tc.path}))
			if got := codeOf(err); got != tc.want {
				t.Fatalf("CreateWatcher code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestPollingWatcher(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	res, err := e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetWatcherId()
	var got []*pb.FilesystemEvent
	poll := func(name string, typ pb.EventType) {
		t.Helper()
		testutil.Eventually(t, testutil.Short, func() bool {
			r, err := e.client.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: id}))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.Msg.GetEvents()...)
			return hasEvent(got, name, typ)
		}, "event "+typ.String()+" "+name)
	}
	f := filepath.Join(dir, "x")
	writeFile(t, f, "data")
	poll("x", pb.EventType_EVENT_TYPE_CREATE)
	poll("x", pb.EventType_EVENT_TYPE_WRITE)
	if err := os.Rename(f, filepath.Join(dir, "y")); err != nil {
		t.Fatal(err)
	}
	poll("x", pb.EventType_EVENT_TYPE_RENAME)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	poll("sub", pb.EventType_EVENT_TYPE_CREATE)
	writeFile(t, filepath.Join(dir, "sub", "z"), "z")
	poll("sub/z", pb.EventType_EVENT_TYPE_CREATE)
	if err := os.Remove(filepath.Join(dir, "y")); err != nil {
		t.Fatal(err)
	}
	poll("y", pb.EventType_EVENT_TYPE_REMOVE)

	// Draining: a second poll without changes returns nothing new.
	r, err := e.client.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Msg.GetEvents()); n != 0 {
		t.Fatalf("second poll returned %d events, want 0", n)
	}

	// Bounded queue: far more events than MaxQueuedEvents between polls.
	n := filesystem.MaxQueuedEvents/2 + 100 // each file yields create + write
	if testing.Short() {
		n = filesystem.MaxQueuedEvents/2 + 10
	}
	for i := range n {
		writeFile(t, filepath.Join(dir, "sub", "q"+strconv.Itoa(i)), "q")
	}
	// Wait until the watcher has seen the last file, then poll once.
	last := "sub/q" + strconv.Itoa(n-1)
	var total int
	testutil.Eventually(t, testutil.Long, func() bool {
		r, err := e.client.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Msg.GetEvents()) > filesystem.MaxQueuedEvents {
			t.Fatalf("poll returned %d events, above the bound %d", len(r.Msg.GetEvents()), filesystem.MaxQueuedEvents)
		}
		total += len(r.Msg.GetEvents())
		return total >= filesystem.MaxQueuedEvents || hasEvent(r.Msg.GetEvents(), last, pb.EventType_EVENT_TYPE_CREATE)
	}, "queue filled")

	if _, err := e.client.RemoveWatcher(ctx, connect.NewRequest(&pb.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	for _, call := range []func() error{
		func() error {
			_, err := e.client.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: id}))
			return err
		},
		func() error {
			_, err := e.client.RemoveWatcher(ctx, connect.NewRequest(&pb.RemoveWatcherRequest{WatcherId: id}))
			return err
		},
	} {
		if got := codeOf(call()); got != connect.CodeNotFound {
			t.Fatalf("after removal: code %v, want NotFound", got)
		}
	}
}

// TestWatchUploadRename: an upload (temp file renamed into place) is seen as
// create + write of the target, never as events on the temp file.
func TestWatchUploadRename(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	res, err := e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, filesystem.UploadTempPrefix+"123")
	writeFile(t, tmp, "uploaded")
	if err := os.Rename(tmp, filepath.Join(dir, "up.txt")); err != nil {
		t.Fatal(err)
	}
	var got []*pb.FilesystemEvent
	testutil.Eventually(t, testutil.Short, func() bool {
		r, err := e.client.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: res.Msg.GetWatcherId()}))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Msg.GetEvents()...)
		return hasEvent(got, "up.txt", pb.EventType_EVENT_TYPE_WRITE)
	}, "write event for the renamed upload")
	if !hasEvent(got, "up.txt", pb.EventType_EVENT_TYPE_CREATE) {
		t.Errorf("no create event for up.txt in %v", got)
	}
	for _, ev := range got {
		if strings.HasPrefix(ev.GetName(), filesystem.UploadTempPrefix) {
			t.Errorf("event for the temp file: %v", ev)
		}
	}
}

// TestWatchRootRemoved: removing the watched directory delivers its remove
// event and ends the stream cleanly.
func TestWatchRootRemoved(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := filepath.Join(t.TempDir(), "watched")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stream, err := e.client.WatchDir(ctx, connect.NewRequest(&pb.WatchDirRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	var got []*pb.FilesystemEvent
	for stream.Receive() {
		if fe := stream.Msg().GetFilesystem(); fe != nil {
			got = append(got, fe)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream ended with %v, want a clean end", err)
	}
	if !hasEvent(got, ".", pb.EventType_EVENT_TYPE_REMOVE) {
		t.Fatalf("events %v lack the removal of the watched directory", got)
	}
}

// TestCloseStopsWatchers checks that Service.Close ends open streams and
// polling watchers (goleak in TestMain catches leftovers).
func TestCloseStopsWatchers(t *testing.T) {
	e := newEnv(t)
	ctx := testutil.Context(t, testutil.Short)
	dir := t.TempDir()
	if _, err := e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir})); err != nil {
		t.Fatal(err)
	}
	stream, err := e.client.WatchDir(ctx, connect.NewRequest(&pb.WatchDirRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	e.svc.Close()
	for stream.Receive() {
		t.Fatalf("message after Close: %v", stream.Msg())
	}
	_, err = e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir}))
	if got := codeOf(err); got != connect.CodeUnavailable {
		t.Fatalf("CreateWatcher after Close: %v, want Unavailable", err)
	}
}

// testUser creates a throwaway Unix user with a home directory, removed when
// the test ends.
func testUser(t *testing.T) (name, home string) {
	t.Helper()
	testutil.RequireRoot(t)
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	name = "wrnfs" + hex.EncodeToString(raw[:])
	base, err := os.MkdirTemp("", "wrenn-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	home = filepath.Join(base, name)
	out, err := exec.Command("useradd", "--home-dir", home, "--create-home", "--shell", "/bin/sh", "--user-group", name).CombinedOutput()
	if err != nil {
		t.Fatalf("useradd: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	return name, home
}

func TestUserSwitching(t *testing.T) {
	name, home := testUser(t)
	e := newEnv(t)
	e.user = name
	ctx := testutil.Context(t, testutil.Short)

	res, err := e.client.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: "made/by/user"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Msg.GetEntry().GetPath(), filepath.Join(home, "made/by/user"); got != want {
		t.Fatalf("relative path resolved to %q, want %q", got, want)
	}
	if got := res.Msg.GetEntry().GetOwner(); got != name {
		t.Fatalf("owner = %q, want %q", got, name)
	}
	for _, p := range []string{"made", "made/by", "made/by/user"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(home, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid == 0 || st.Gid == 0 {
			t.Errorf("%s owned by %d:%d, want the test user", p, st.Uid, st.Gid)
		}
	}

	// Permission checks are the user's: root's private files are off limits.
	secretDir := t.TempDir() // 0700, root-owned
	secret := filepath.Join(secretDir, "secret")
	writeFile(t, secret, "s")
	tests := []struct {
		name string
		call func() error
	}{
		{"stat in private dir", func() error {
			_, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: secret}))
			return err
		}},
		{"mkdir in /root-owned dir", func() error {
			_, err := e.client.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(secretDir, "d")}))
			return err
		}},
		{"remove root file", func() error {
			_, err := e.client.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: secret}))
			return err
		}},
		{"list private dir", func() error {
			_, err := e.client.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: secretDir}))
			return err
		}},
		{"watch private dir", func() error {
			_, err := e.client.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: secretDir}))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := codeOf(tc.call()); got != connect.CodePermissionDenied {
				t.Fatalf("code = %v, want PermissionDenied", got)
			}
		})
	}
	if _, err := os.Stat(secret); err != nil {
		t.Fatalf("secret file was touched: %v", err)
	}
	// The same request as root (no user named) succeeds: envd's own
	// credentials were restored after acting as the user.
	e.user = ""
	if _, err := e.client.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: secret})); err != nil {
		t.Fatalf("stat as root after user calls: %v", err)
	}
}
