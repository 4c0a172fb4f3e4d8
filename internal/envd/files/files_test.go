package files_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/files"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server is a /files endpoint on a loopback TCP listener.
type server struct {
	url    string
	client *http.Client
}

func newServer(t testing.TB) *server {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	mux := http.NewServeMux()
	mux.Handle("/files", files.NewHandler(logger, defaults.New("")))
	srv := httptest.NewServer(mux)
	tr := &http.Transport{DisableCompression: true, WriteBufferSize: 1 << 20, ReadBufferSize: 1 << 20}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return &server{url: srv.URL, client: &http.Client{Transport: tr}}
}

// query builds "/files?path=…&username=…" (empty values are omitted).
func (s *server) query(path, user string) string {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	if user != "" {
		q.Set("username", user)
	}
	return s.url + "/files?" + q.Encode()
}

func (s *server) do(t testing.TB, req *http.Request) (int, []byte, http.Header) {
	t.Helper()
	res, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, b, res.Header
}

func (s *server) post(t testing.TB, rawURL, contentType string, body io.Reader, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	code, b, _ := s.do(t, req)
	return code, b
}

func (s *server) get(t testing.TB, rawURL string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s.do(t, req)
}

type apiError struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
}

// wantError asserts a JSON error body with the given status.
func wantError(t testing.TB, code int, body []byte, want int) {
	t.Helper()
	if code != want {
		t.Fatalf("status = %d (%s), want %d", code, body, want)
	}
	var e apiError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	if e.Code != want || e.Message == "" {
		t.Fatalf("error body = %+v, want code %d and a message", e, want)
	}
}

func decodeEntries(t testing.TB, body []byte) []files.EntryInfo {
	t.Helper()
	var out []files.EntryInfo
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("upload response %q is not a JSON array: %v", body, err)
	}
	return out
}

// noTempFiles fails when an upload left a temp file in dir.
func noTempFiles(t testing.TB, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".wrenn-upload-") {
			t.Errorf("temp file left behind: %s", p)
		}
		return nil
	})
}

func TestDownload(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "hello world.txt")
	if err := os.WriteFile(file, []byte("hello, wrenn"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, h := s.get(t, s.query(file, ""))
	if code != http.StatusOK || string(body) != "hello, wrenn" {
		t.Fatalf("GET = %d %q", code, body)
	}
	for k, want := range map[string]string{
		"Content-Type":        "application/octet-stream",
		"Content-Length":      "12",
		"Content-Disposition": `attachment; filename="hello world.txt"`,
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	t.Run("range", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, s.query(file, ""), nil)
		req.Header.Set("Range", "bytes=7-")
		code, body, _ := s.do(t, req)
		if code != http.StatusPartialContent || string(body) != "wrenn" {
			t.Fatalf("range GET = %d %q", code, body)
		}
	})
	t.Run("basic auth user", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, s.query(file, ""), nil)
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
		if code, body, _ := s.do(t, req); code != http.StatusOK {
			t.Fatalf("GET with Basic root = %d %s", code, body)
		}
	})
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		url  string
		want int
	}{
		{"missing path", s.url + "/files", http.StatusBadRequest},
		{"not found", s.query(filepath.Join(dir, "nope"), ""), http.StatusNotFound},
		{"through a file", s.query(file+"/x", ""), http.StatusNotFound},
		{"directory", s.query(dir, ""), http.StatusBadRequest},
		{"fifo", s.query(fifo, ""), http.StatusBadRequest},
		{"unknown user", s.query(file, "no-such-user-wrenn"), http.StatusUnauthorized},
		{"bad user name", s.query(file, "a/b"), http.StatusUnauthorized},
		{"nul byte", s.url + "/files?path=%2Ftmp%2Fa%00b", http.StatusBadRequest},
		{"huge path", s.query("/"+strings.Repeat("a", 5000), ""), http.StatusBadRequest},
		{"bad escape", s.url + "/files?path=%zz", http.StatusBadRequest},
		{"path twice", s.url + "/files?path=/a&path=/b", http.StatusBadRequest},
		{"tilde user", s.query("~root/x", ""), http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := s.get(t, tc.url)
			wantError(t, code, body, tc.want)
		})
	}
	t.Run("method", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodDelete, s.query(file, ""), nil)
		code, body, h := s.do(t, req)
		wantError(t, code, body, http.StatusMethodNotAllowed)
		if h.Get("Allow") == "" {
			t.Error("405 without Allow header")
		}
	})
}

func TestUploadRaw(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "new", "nested", "f.bin")
	code, body := s.post(t, s.query(target, ""), "application/octet-stream", strings.NewReader("payload"), nil)
	if code != http.StatusOK {
		t.Fatalf("upload = %d %s", code, body)
	}
	got := decodeEntries(t, body)
	want := []files.EntryInfo{{Path: target, Name: "f.bin", Type: "file"}}
	if len(got) != 1 || got[0].Path != want[0].Path || got[0].Name != want[0].Name || got[0].Type != want[0].Type {
		t.Fatalf("response = %+v, want %+v", got, want)
	}
	if b, _ := os.ReadFile(target); string(b) != "payload" {
		t.Fatalf("file = %q", b)
	}
	st, _ := os.Stat(target)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("new file mode = %v, want 0644", st.Mode().Perm())
	}

	t.Run("overwrite keeps mode", func(t *testing.T) {
		if err := os.Chmod(target, 0o600); err != nil {
			t.Fatal(err)
		}
		code, body := s.post(t, s.query(target, ""), "", strings.NewReader("second"), nil)
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, body)
		}
		if b, _ := os.ReadFile(target); string(b) != "second" {
			t.Fatalf("file = %q", b)
		}
		if st, _ := os.Stat(target); st.Mode().Perm() != 0o600 {
			t.Errorf("mode = %v, want 0600 kept", st.Mode().Perm())
		}
	})
	t.Run("metadata", func(t *testing.T) {
		p := filepath.Join(dir, "meta.txt")
		code, body := s.post(t, s.query(p, ""), "application/octet-stream", strings.NewReader("m"),
			map[string]string{"X-Metadata-Color": "blue", "X-Metadata-Owner-Team": "infra"})
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, body)
		}
		if got := decodeEntries(t, body)[0].Metadata; got["color"] != "blue" || got["owner-team"] != "infra" {
			t.Fatalf("response metadata = %v", got)
		}
		buf := make([]byte, 64)
		n, err := unix.Getxattr(p, "user.e2b.color", buf)
		if err != nil || string(buf[:n]) != "blue" {
			t.Fatalf("xattr = %q, %v", buf[:n], err)
		}
		// A later upload without metadata replaces (clears) it.
		if code, body := s.post(t, s.query(p, ""), "", strings.NewReader("m2"), nil); code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, body)
		}
		if _, err := unix.Getxattr(p, "user.e2b.color", buf); err == nil {
			t.Fatal("metadata survived an upload without metadata")
		}
	})
	t.Run("gzip", func(t *testing.T) {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		_, _ = zw.Write([]byte("compressed content"))
		_ = zw.Close()
		p := filepath.Join(dir, "z.txt")
		code, body := s.post(t, s.query(p, ""), "application/octet-stream", &zb, map[string]string{"Content-Encoding": "gzip"})
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, body)
		}
		if b, _ := os.ReadFile(p); string(b) != "compressed content" {
			t.Fatalf("file = %q", b)
		}
	})
	noTempFiles(t, dir)
}

func TestUploadErrors(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("k", 247)
	tests := []struct {
		name        string
		url         string
		contentType string
		body        string
		hdr         map[string]string
		want        int
	}{
		{name: "missing path", url: s.url + "/files", body: "x", want: http.StatusBadRequest},
		{name: "directory as file", url: s.query(dir, ""), body: "x", want: http.StatusBadRequest},
		{name: "parent is a file", url: s.query(file+"/sub/x", ""), body: "x", want: http.StatusBadRequest},
		{name: "unknown user", url: s.query(filepath.Join(dir, "u"), "no-such-user-wrenn"), body: "x", want: http.StatusUnauthorized},
		{name: "malformed basic auth", url: s.query(filepath.Join(dir, "u"), ""), body: "x", hdr: map[string]string{"Authorization": "Basic !!!"}, want: http.StatusUnauthorized},
		{name: "nul byte", url: s.url + "/files?path=" + url.QueryEscape(dir+"/a\x00b"), body: "x", want: http.StatusBadRequest},
		{name: "huge path", url: s.query("/"+strings.Repeat("p", 4097), ""), body: "x", want: http.StatusBadRequest},
		{name: "bad content type", url: s.query(filepath.Join(dir, "c"), ""), contentType: "multipart/form-data; boundary", body: "x", want: http.StatusBadRequest},
		{name: "multipart without boundary", url: s.query(filepath.Join(dir, "c"), ""), contentType: "multipart/form-data", body: "x", want: http.StatusBadRequest},
		{name: "multipart garbage", url: s.query(filepath.Join(dir, "c"), ""), contentType: "multipart/form-data; boundary=XYZ", body: "not multipart at all", want: http.StatusBadRequest},
		{
			name: "multipart truncated", url: s.query(filepath.Join(dir, "c"), ""), contentType: "multipart/form-data; boundary=XYZ",
			body: "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\npartial data", want: http.StatusBadRequest,
		},
		{
			name: "multipart no file part", url: s.query(filepath.Join(dir, "c"), ""), contentType: "multipart/form-data; boundary=XYZ",
			body: "--XYZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--XYZ--\r\n", want: http.StatusBadRequest,
		},
		{name: "bad gzip", url: s.query(filepath.Join(dir, "g"), ""), body: "not gzip", hdr: map[string]string{"Content-Encoding": "gzip"}, want: http.StatusBadRequest},
		{name: "unknown encoding", url: s.query(filepath.Join(dir, "g"), ""), body: "x", hdr: map[string]string{"Content-Encoding": "br"}, want: http.StatusBadRequest},
		{name: "metadata empty key", url: s.query(filepath.Join(dir, "m"), ""), body: "x", hdr: map[string]string{"X-Metadata-": "v"}, want: http.StatusBadRequest},
		{name: "metadata key too long", url: s.query(filepath.Join(dir, "m"), ""), body: "x", hdr: map[string]string{"X-Metadata-" + long: "v"}, want: http.StatusBadRequest},
		{name: "metadata not printable", url: s.query(filepath.Join(dir, "m"), ""), body: "x", hdr: map[string]string{"X-Metadata-K": "caf\xc3\xa9"}, want: http.StatusBadRequest},
		{name: "metadata too large", url: s.query(filepath.Join(dir, "m"), ""), body: "x", hdr: map[string]string{"X-Metadata-A": strings.Repeat("a", 2100), "X-Metadata-B": strings.Repeat("b", 2100)}, want: http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := s.post(t, tc.url, tc.contentType, strings.NewReader(tc.body), tc.hdr)
			wantError(t, code, body, tc.want)
		})
	}
	for _, p := range []string{"c", "g", "m", "u"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("failed upload created %s", p)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Errorf("existing file changed to %q", b)
	}
	noTempFiles(t, dir)
}

// multipartBody builds a multipart/form-data body with one "file" part per
// (filename, content) pair.
func multipartBody(t testing.TB, parts ...[2]string) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, p[0]))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write([]byte(p[1]))
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), &buf
}

func TestUploadMultipart(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Run("path names the file", func(t *testing.T) {
		target := filepath.Join(dir, "one", "a.txt")
		ct, body := multipartBody(t, [2]string{target, "A"})
		code, resp := s.post(t, s.query(target, ""), ct, body, map[string]string{"X-Metadata-K": "v"})
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, resp)
		}
		if got := decodeEntries(t, resp); len(got) != 1 || got[0].Path != target || got[0].Metadata["k"] != "v" {
			t.Fatalf("response = %+v", got)
		}
		if got := read(target); got != "A" {
			t.Fatalf("content = %q", got)
		}
	})
	t.Run("no path: part file names", func(t *testing.T) {
		a, b := filepath.Join(dir, "multi", "a.txt"), filepath.Join(dir, "multi", "deep", "b.txt")
		ct, body := multipartBody(t, [2]string{a, "first"}, [2]string{b, "second"})
		code, resp := s.post(t, s.url+"/files", ct, body, nil)
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, resp)
		}
		got := decodeEntries(t, resp)
		paths := []string{}
		for _, e := range got {
			paths = append(paths, e.Path)
		}
		if !slices.Equal(paths, []string{a, b}) {
			t.Fatalf("paths = %v", paths)
		}
		if read(a) != "first" || read(b) != "second" {
			t.Fatal("contents differ")
		}
	})
	t.Run("path is a directory: traversal in file name stays inside", func(t *testing.T) {
		target := filepath.Join(dir, "into")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		ct, body := multipartBody(t, [2]string{"../../escape.txt", "E"}, [2]string{"sub/name.txt", "N"})
		code, resp := s.post(t, s.query(target, ""), ct, body, nil)
		if code != http.StatusOK {
			t.Fatalf("upload = %d %s", code, resp)
		}
		if read(filepath.Join(target, "escape.txt")) != "E" || read(filepath.Join(target, "name.txt")) != "N" {
			t.Fatal("contents differ")
		}
		if _, err := os.Stat(filepath.Join(dir, "..", "escape.txt")); err == nil {
			t.Fatal("file escaped the target directory")
		}
	})
	t.Run("duplicate target", func(t *testing.T) {
		target := filepath.Join(dir, "dup.txt")
		ct, body := multipartBody(t, [2]string{"x", "1"}, [2]string{"y", "2"})
		code, resp := s.post(t, s.query(target, ""), ct, body, nil)
		wantError(t, code, resp, http.StatusBadRequest)
	})
	t.Run("dot file name into directory", func(t *testing.T) {
		ct, body := multipartBody(t, [2]string{"..", "1"})
		code, resp := s.post(t, s.query(dir, ""), ct, body, nil)
		wantError(t, code, resp, http.StatusBadRequest)
	})
	noTempFiles(t, dir)
}

// TestUploadNoSpace fills a 1 MiB tmpfs: the upload answers 507 and leaves
// no temp file.
func TestUploadNoSpace(t *testing.T) {
	testutil.RequireRoot(t)
	s := newServer(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	// Raw upload: the Content-Length reservation fails up front.
	code, body := s.post(t, s.query(filepath.Join(dir, "big"), ""), "application/octet-stream", bytes.NewReader(make([]byte, 3<<20)), nil)
	wantError(t, code, body, http.StatusInsufficientStorage)
	noTempFiles(t, dir)
	// Multipart: no size is known, the write itself hits ENOSPC.
	ct, mb := multipartBody(t, [2]string{"big", strings.Repeat("x", 3<<20)})
	code, body = s.post(t, s.query(filepath.Join(dir, "big"), ""), ct, mb, nil)
	wantError(t, code, body, http.StatusInsufficientStorage)
	noTempFiles(t, dir)
	if _, err := os.Stat(filepath.Join(dir, "big")); err == nil {
		t.Fatal("partial file left at the target")
	}
}

// testUser creates a throwaway Unix user with a home directory, removed when
// the test ends.
func testUser(t *testing.T) (name, home string) {
	t.Helper()
	testutil.RequireRoot(t)
	var raw [4]byte
	_, _ = rand.Read(raw[:])
	name = "wrnfl" + hex.EncodeToString(raw[:])
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

func TestUserOwnership(t *testing.T) {
	name, home := testUser(t)
	s := newServer(t)

	// Relative path, resolved against the user's home; parents created.
	code, body := s.post(t, s.query("docs/new/file.txt", name), "application/octet-stream", strings.NewReader("mine"), nil)
	if code != http.StatusOK {
		t.Fatalf("upload = %d %s", code, body)
	}
	want := filepath.Join(home, "docs/new/file.txt")
	if got := decodeEntries(t, body)[0].Path; got != want {
		t.Fatalf("path = %q, want %q", got, want)
	}
	for _, p := range []string{"docs", "docs/new", "docs/new/file.txt"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(home, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid == 0 || st.Gid == 0 {
			t.Errorf("%s owned by %d:%d, want the test user", p, st.Uid, st.Gid)
		}
	}
	// A large raw upload (the spliced path) is owned by the user too.
	code, body = s.post(t, s.query("big.bin", name), "application/octet-stream", bytes.NewReader(make([]byte, 2<<20)), nil)
	if code != http.StatusOK {
		t.Fatalf("large upload = %d %s", code, body)
	}
	var big unix.Stat_t
	if err := unix.Stat(filepath.Join(home, "big.bin"), &big); err != nil || big.Uid == 0 || big.Size != 2<<20 {
		t.Fatalf("big.bin: uid %d size %d, %v", big.Uid, big.Size, err)
	}
	// Multipart upload as the user (Basic auth instead of the query).
	ct, mb := multipartBody(t, [2]string{"mp.txt", "mp"})
	code, body = s.post(t, s.query("", ""), ct, mb, map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"))})
	if code != http.StatusOK {
		t.Fatalf("multipart upload = %d %s", code, body)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(home, "mp.txt"), &st); err != nil || st.Uid == 0 {
		t.Fatalf("mp.txt: uid %d, %v", st.Uid, err)
	}
	// Download of the user's own file works; root's private file is 403.
	if code, b, _ := s.get(t, s.query(want, name)); code != http.StatusOK || string(b) != "mine" {
		t.Fatalf("download as user = %d %q", code, b)
	}
	private := t.TempDir() // 0700 root
	secret := filepath.Join(private, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, b, _ := s.get(t, s.query(secret, name))
	wantError(t, code, b, http.StatusForbidden)
	code, body = s.post(t, s.query(filepath.Join(private, "planted"), name), "", strings.NewReader("x"), nil)
	wantError(t, code, body, http.StatusForbidden)
	if _, err := os.Stat(filepath.Join(private, "planted")); err == nil {
		t.Fatal("user wrote into root's private directory")
	}
	noTempFiles(t, home)
}

// TestUploadSpliced covers large raw uploads, which take the hijacked
// splice(2) path: content, metadata, Expect: 100-continue, Connection: close,
// and a body that ends early.
func TestUploadSpliced(t *testing.T) {
	s := newServer(t)
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/16+7) // > 1 MiB, not block aligned
	target := filepath.Join(dir, "sub", "big.bin")

	tr := &http.Transport{DisableCompression: true, ExpectContinueTimeout: testutil.Short}
	t.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodPost, s.query(target, ""), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("X-Metadata-Kind", "spliced")
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK || !res.Close {
		t.Fatalf("upload = %d (close %v) %s", res.StatusCode, res.Close, body)
	}
	got := decodeEntries(t, body)
	if len(got) != 1 || got[0].Path != target || got[0].Metadata["kind"] != "spliced" {
		t.Fatalf("response = %+v", got)
	}
	if b, err := os.ReadFile(target); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("file differs from upload (%d vs %d bytes): %v", len(b), len(data), err)
	}

	t.Run("body ends early", func(t *testing.T) {
		c, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		short := filepath.Join(dir, "short.bin")
		_, _ = fmt.Fprintf(c, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
			url.QueryEscape(short), 4<<20)
		_, _ = c.Write(data[:2<<20])
		_ = c.(*net.TCPConn).CloseWrite()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		wantError(t, res.StatusCode, body, http.StatusBadRequest)
		if _, err := os.Stat(short); err == nil {
			t.Fatal("short upload created the target")
		}
	})
	noTempFiles(t, dir)
}
