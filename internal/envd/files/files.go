// Package files implements envd's streamed /files HTTP endpoint (E2B
// compatible): GET downloads one file, POST uploads one or more files as a
// raw body or multipart/form-data.
//
// Invariants:
//   - Bodies are streamed in both directions and no file is ever held in
//     memory: downloads go through http.ServeContent (sendfile on TCP);
//     uploads are copied through one pooled 1 MiB buffer, and a large raw
//     upload over HTTP/1 is spliced from the socket into the file (see
//     uploadSpliced).
//   - An upload is written to a temp file created with O_EXCL in the target
//     directory and renamed over the target, so readers see either the old
//     or the complete new file, and a symlink planted at the temp name cannot
//     redirect the write. A failed upload leaves no temp file behind.
//   - Every filesystem access acts as the requested user (filesystem.RunAs):
//     parents, temp files and targets are created by and owned by that user.
//   - Every error is answered as JSON {"message","code"} with a 4xx/5xx status.
package files

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
	"github.com/wrenn-dev/wrenn/internal/envd/identity"
)

const (
	// fileMode is the mode of newly uploaded files; an upload that replaces
	// a regular file keeps that file's permission bits.
	fileMode = 0o644
	dirMode  = 0o755
)

// Handler serves GET and POST on /files.
type Handler struct {
	logger   *slog.Logger
	defaults *defaults.Defaults
}

// NewHandler returns the /files handler.
func NewHandler(logger *slog.Logger, d *defaults.Defaults) http.Handler {
	return &Handler{logger: logger, defaults: d}
}

// EntryInfo is one element of the upload response (E2B's EntryInfo schema).
type EntryInfo struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// apiError is an error with the HTTP status it is answered with.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// statusOf maps any error to an HTTP status and client-facing message.
func statusOf(err error) (int, string) {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status, ae.msg
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return filesystem.HTTPStatus(ce.Code()), ce.Message()
	}
	code := filesystem.Classify(err)
	if code == connect.CodeResourceExhausted {
		return http.StatusInsufficientStorage, "not enough disk space available: " + err.Error()
	}
	return filesystem.HTTPStatus(code), err.Error()
}

// errorBody is the JSON error every failed request answers with.
type errorBody struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := statusOf(err)
	if status >= 500 && status != http.StatusInsufficientStorage {
		h.logger.Error("files request failed", "method", r.Method, "err", err)
	}
	writeJSON(w, status, errorBody{msg, status})
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var err error
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		err = h.download(w, r)
	case http.MethodPost:
		err = h.upload(w, r)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		err = errorf(http.StatusMethodNotAllowed, "method %s not allowed on /files", r.Method)
	}
	if err != nil {
		h.fail(w, r, err)
	}
}

// request is the decoded, validated query of a /files request.
type request struct {
	user *identity.User
	// path is the resolved path parameter, "" when absent.
	path string
}

func (h *Handler) decode(r *http.Request) (*request, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "malformed query string: %v", err)
	}
	if len(q["path"]) > 1 {
		return nil, errorf(http.StatusBadRequest, "path given more than once")
	}
	name := q.Get("username")
	if name == "" {
		name, err = identity.UsernameFromHeader(r.Header.Get("Authorization"))
		if err != nil {
			return nil, errorf(http.StatusUnauthorized, "%v", err)
		}
	}
	u, err := h.defaults.ResolveUser(name)
	if err != nil {
		if errors.Is(err, identity.ErrUnknownUser) {
			return nil, errorf(http.StatusUnauthorized, "invalid user: %v", err)
		}
		return nil, fmt.Errorf("resolve user: %w", err)
	}
	req := &request{user: u}
	if raw := q.Get("path"); raw != "" {
		p, err := filesystem.ResolvePath(raw, u.Home)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", err)
		}
		req.path = p
	}
	return req, nil
}

// download streams one regular file.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) error {
	req, err := h.decode(r)
	if err != nil {
		return err
	}
	if req.path == "" {
		return errorf(http.StatusBadRequest, "path is required")
	}
	var f *os.File
	err = filesystem.RunAs(req.user, func() (err error) {
		// O_NONBLOCK keeps a FIFO from blocking the open; it is rejected below.
		f, err = os.OpenFile(req.path, os.O_RDONLY|unix.O_NONBLOCK, 0)
		return err
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return errorf(http.StatusNotFound, "path %q does not exist", req.path)
		}
		return err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", req.path, err)
	}
	if st.IsDir() {
		return errorf(http.StatusBadRequest, "path %q is a directory", req.path)
	}
	if !st.Mode().IsRegular() {
		return errorf(http.StatusBadRequest, "path %q is not a regular file", req.path)
	}
	name := filepath.Base(req.path)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	// ServeContent sets Content-Length, answers Range and conditional
	// requests, and copies with sendfile(2) when the connection allows.
	http.ServeContent(w, r, name, st.ModTime(), f)
	return nil
}

// upload handles raw and multipart uploads.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) error {
	req, err := h.decode(r)
	if err != nil {
		return err
	}
	meta, err := parseMetadata(r.Header)
	if err != nil {
		return err
	}
	body := io.Reader(r.Body)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return errorf(http.StatusBadRequest, "malformed gzip body: %v", err)
		}
		defer func() { _ = zr.Close() }()
		body = zr
	default:
		return errorf(http.StatusBadRequest, "unsupported Content-Encoding %q (supported: identity, gzip)", enc)
	}

	mediaType, params := "application/octet-stream", map[string]string(nil)
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mediaType, params, err = mime.ParseMediaType(ct)
		if err != nil {
			return errorf(http.StatusBadRequest, "malformed Content-Type %q: %v", ct, err)
		}
	}
	var entries []EntryInfo
	if mediaType == "multipart/form-data" {
		entries, err = h.uploadMultipart(req, body, params["boundary"], meta)
	} else {
		if req.path == "" {
			return errorf(http.StatusBadRequest, "path is required for a raw (non-multipart) upload")
		}
		if hj, ok := w.(http.Hijacker); ok && spliceable(r, body) {
			h.uploadSpliced(hj, r, req, meta)
			return nil
		}
		size := r.ContentLength
		if body != io.Reader(r.Body) {
			size = -1 // compressed: the decoded size is unknown
		}
		var e EntryInfo
		e, err = writeFile(req.user, req.path, size, meta, func(f *os.File) error {
			n, err := copyToFile(f, body)
			if err == nil && size > 0 && n != size {
				// The transport reports a short body as an error; never
				// keep preallocated zeroes past the data regardless.
				return &readError{fmt.Errorf("body ended after %d of %d bytes", n, size)}
			}
			return err
		})
		entries = []EntryInfo{e}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, entries)
	return nil
}

// uploadMultipart writes every file part. The target of a part is the path
// parameter when it names a file (or does not exist), path/<part file name>
// when it names a directory, and the part's file name resolved like any path
// when there is no path parameter. Non-file parts are skipped.
func (h *Handler) uploadMultipart(req *request, body io.Reader, boundary string, meta map[string]string) ([]EntryInfo, error) {
	if boundary == "" {
		return nil, errorf(http.StatusBadRequest, "multipart/form-data without a boundary")
	}
	pathIsDir := false
	if req.path != "" {
		_ = filesystem.RunAs(req.user, func() error {
			st, err := os.Stat(req.path)
			pathIsDir = err == nil && st.IsDir()
			return nil
		})
	}
	mr := multipart.NewReader(body, boundary)
	var entries []EntryInfo
	seen := map[string]bool{}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "malformed multipart body: %v", err)
		}
		filename := partFileName(part)
		if filename == "" {
			_ = part.Close()
			continue
		}
		target, err := partTarget(req, pathIsDir, filename)
		if err != nil {
			_ = part.Close()
			return nil, err
		}
		if seen[target] {
			_ = part.Close()
			return nil, errorf(http.StatusBadRequest, "more than one part targets %q", target)
		}
		seen[target] = true
		e, err := writeFile(req.user, target, -1, meta, func(f *os.File) error {
			_, err := copyToFile(f, part)
			return err
		})
		_ = part.Close()
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, errorf(http.StatusBadRequest, "multipart body contains no file part")
	}
	return entries, nil
}

// partFileName returns the raw filename of a part's Content-Disposition
// (multipart.Part.FileName keeps only the base name; E2B clients send whole
// paths there when no path parameter is given).
func partFileName(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

func partTarget(req *request, pathIsDir bool, filename string) (string, error) {
	switch {
	case req.path == "":
		p, err := filesystem.ResolvePath(filename, req.user.Home)
		if err != nil {
			return "", errorf(http.StatusBadRequest, "part file name: %v", err)
		}
		return p, nil
	case pathIsDir:
		// Only the base name is used, so a crafted file name ("../../x")
		// cannot leave the directory the caller chose.
		base := filepath.Base(filepath.Clean("/" + filename))
		if base == "/" || base == "." || base == ".." {
			return "", errorf(http.StatusBadRequest, "part file name %q names no file", filename)
		}
		if _, err := filesystem.ResolvePath(base, "/"); err != nil {
			return "", errorf(http.StatusBadRequest, "part file name: %v", err)
		}
		return filepath.Join(req.path, base), nil
	default:
		return req.path, nil
	}
}

// writeFile creates a temp file in target's directory as user u, lets fill
// write the content, sets metadata and mode, and renames it over target.
// size, when known (> 0), is reserved up front with fallocate(2): a disk too
// small fails before any byte is copied, and ext4 writes into preallocated
// extents markedly faster than it allocates blocks as it goes. fill reports
// body errors as *readError (400), anything else is a write error.
func writeFile(u *identity.User, target string, size int64, meta map[string]string, fill func(*os.File) error) (EntryInfo, error) {
	if target == "/" {
		return EntryInfo{}, errorf(http.StatusBadRequest, "path %q is a directory", target)
	}
	dir := filepath.Dir(target)
	var tmp *os.File
	mode := os.FileMode(fileMode)
	err := filesystem.RunAs(u, func() error {
		if err := os.MkdirAll(dir, dirMode); err != nil {
			if errors.Is(err, unix.ENOTDIR) || errors.Is(err, fs.ErrExist) {
				return errorf(http.StatusBadRequest, "cannot create directory %q: a parent is not a directory", dir)
			}
			return err
		}
		if st, err := os.Lstat(target); err == nil {
			if st.IsDir() {
				return errorf(http.StatusBadRequest, "path %q is a directory", target)
			}
			if st.Mode().IsRegular() {
				mode = st.Mode().Perm()
			}
		}
		var err error
		// CreateTemp opens with O_CREATE|O_EXCL and a random name.
		tmp, err = os.CreateTemp(dir, filesystem.UploadTempPrefix+"*")
		return err
	})
	if err != nil {
		return EntryInfo{}, err
	}
	tmpName := tmp.Name()
	cleanup := func() {
		_ = tmp.Close()
		_ = os.Remove(tmpName)
	}

	if size > 0 {
		if err := unix.Fallocate(int(tmp.Fd()), 0, 0, size); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			cleanup()
			return EntryInfo{}, fmt.Errorf("reserve %d bytes for %s: %w", size, target, err)
		}
	}
	if err := fill(tmp); err != nil {
		cleanup()
		var re *readError
		if errors.As(err, &re) {
			return EntryInfo{}, errorf(http.StatusBadRequest, "reading upload body for %q: %v", target, re.err)
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return EntryInfo{}, fmt.Errorf("write %s: %w", target, pe.Err)
		}
		return EntryInfo{}, fmt.Errorf("write %s: %w", target, err)
	}
	for k, v := range meta {
		if err := unix.Fsetxattr(int(tmp.Fd()), filesystem.MetadataXattrPrefix+k, []byte(v), 0); err != nil {
			cleanup()
			return EntryInfo{}, fmt.Errorf("set metadata %q on %s: %w", k, target, err)
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		cleanup()
		return EntryInfo{}, fmt.Errorf("chmod %s: %w", target, err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(tmpName)
		return EntryInfo{}, fmt.Errorf("close %s: %w", target, err)
	}
	err = filesystem.RunAs(u, func() error { return os.Rename(tmpName, target) })
	if err != nil {
		_ = os.Remove(tmpName)
		if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return EntryInfo{}, errorf(http.StatusBadRequest, "path %q is a directory", target)
		}
		return EntryInfo{}, err
	}
	return EntryInfo{Path: target, Name: filepath.Base(target), Type: "file", Metadata: meta}, nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// spliceMin is the smallest raw upload taken over by uploadSpliced; smaller
// ones keep the connection alive for the next request.
const spliceMin = 1 << 20

// spliceable reports whether a raw upload can bypass net/http's body reader:
// a plain-TCP HTTP/1.x request with a known, large Content-Length and no
// content coding.
func spliceable(r *http.Request, body io.Reader) bool {
	return r.ProtoMajor == 1 && r.TLS == nil && r.ContentLength >= spliceMin &&
		len(r.TransferEncoding) == 0 && body == io.Reader(r.Body)
}

// uploadSpliced serves a large raw upload on the hijacked connection: the
// body goes from the socket into the file with splice(2), which costs about
// half the CPU of copying through user space (measured: ~0.5 s instead of
// ~1.1 s per GiB, sender included). The answer is written by hand with
// "Connection: close", since a hijacked connection cannot return to the
// server's keep-alive pool. It handles "Expect: 100-continue" itself and
// clears the server's deadlines, as net/http leaves both to the hijacker.
func (h *Handler) uploadSpliced(hj http.Hijacker, r *http.Request, req *request, meta map[string]string) {
	conn, rw, err := hj.Hijack()
	if err != nil {
		h.logger.Error("hijack for upload", "err", err)
		return
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Time{})
	if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		if _, err := rw.WriteString("HTTP/1.1 100 Continue\r\n\r\n"); err != nil || rw.Flush() != nil {
			return
		}
	}
	size := r.ContentLength
	e, err := writeFile(req.user, req.path, size, meta, func(f *os.File) error {
		return spliceBody(f, rw.Reader, conn, size)
	})
	status, payload := http.StatusOK, any([]EntryInfo{e})
	if err != nil {
		var msg string
		status, msg = statusOf(err)
		if status >= 500 && status != http.StatusInsufficientStorage {
			h.logger.Error("files request failed", "method", r.Method, "err", err)
		}
		payload = errorBody{msg, status}
		// The client may still be sending the body; closing with unread
		// data would reset the connection and it might never see this
		// answer. Read (and drop) what it still sends, within bounds.
		drainBody(rw.Reader, conn, 64<<20, 250*time.Millisecond)
	}
	body, _ := json.Marshal(payload)
	body = append(body, '\n')
	_, _ = fmt.Fprintf(rw, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n", status, http.StatusText(status), len(body))
	_, _ = rw.Write(body)
	_ = rw.Flush()
	if tc, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}
