package wrenn

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// FilesService moves files in and out of capsules. Transfers are streamed:
// neither the client nor the server holds a whole file in memory.
type FilesService struct{ c *Client }

// FileEntry describes a file or directory in a capsule (Type is "file",
// "dir", "symlink", …; ModifiedAt is Unix seconds).
type FileEntry = wrennapi.FileEntry

func filesPath(id string) string { return "/v1/capsules/" + url.PathEscape(id) + "/files" }

// Open returns a stream of the file's bytes; the caller closes it. A body
// cut short by a server failure reads as an error, never as a short file.
func (f *FilesService) Open(ctx context.Context, id, filePath string) (io.ReadCloser, error) {
	resp, err := f.c.do(ctx, http.MethodGet, filesPath(id), url.Values{"path": {filePath}}, nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Read copies the file at filePath in the capsule to w and returns the
// number of bytes copied.
func (f *FilesService) Read(ctx context.Context, id, filePath string, w io.Writer) (int64, error) {
	rc, err := f.Open(ctx, id, filePath)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.Copy(w, rc)
	if err != nil {
		return n, fmt.Errorf("wrenn: read %s: %w", filePath, err)
	}
	return n, nil
}

// Write streams r into the file at filePath in the capsule (created or
// replaced; parent directories are created) and returns the new entry.
// The length is sent when r tells it (a regular *os.File, *bytes.Reader,
// *bytes.Buffer, *strings.Reader), which lets the capsule write the body
// to the file without copying it through user space; else use WriteSized.
func (f *FilesService) Write(ctx context.Context, id, filePath string, r io.Reader) (*FileEntry, error) {
	if n, ok := readerSize(r); ok {
		return f.WriteSized(ctx, id, filePath, r, n)
	}
	return f.write(ctx, id, filePath, r)
}

// WriteSized is Write for a body of exactly size bytes (sent as its
// Content-Length): a reader that ends early or has more fails the upload.
func (f *FilesService) WriteSized(ctx context.Context, id, filePath string, r io.Reader, size int64) (*FileEntry, error) {
	if size < 0 {
		return f.write(ctx, id, filePath, r)
	}
	return f.write(ctx, id, filePath, sizedBody{r, size})
}

// sizedBody is a request body of known length (Client.do sends it as the
// Content-Length).
type sizedBody struct {
	io.Reader
	n int64
}

// readerSize is the number of bytes r has left, when r tells it.
func readerSize(r io.Reader) (int64, bool) {
	switch v := r.(type) {
	case interface{ Len() int }: // *bytes.Reader, *bytes.Buffer, *strings.Reader
		return int64(v.Len()), true
	case *os.File:
		st, err := v.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return 0, false
		}
		off, err := v.Seek(0, io.SeekCurrent)
		if err != nil || off > st.Size() {
			return 0, false
		}
		return st.Size() - off, true
	}
	return 0, false
}

func (f *FilesService) write(ctx context.Context, id, filePath string, r io.Reader) (*FileEntry, error) {
	var out FileEntry
	resp, err := f.c.do(ctx, http.MethodPut, filesPath(id), url.Values{"path": {filePath}}, r, "application/octet-stream")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := decodeJSONBody(resp, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// List returns the entries of a directory (depth 1 = direct children).
func (f *FilesService) List(ctx context.Context, id, dir string, depth int) ([]FileEntry, error) {
	q := url.Values{"path": {dir}}
	if depth > 0 {
		q.Set("depth", strconv.Itoa(depth))
	}
	var out wrennapi.FileList
	if err := f.c.call(ctx, http.MethodGet, filesPath(id)+"/list", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Entries, nil
}

// Stat describes one path (found by listing its parent directory).
func (f *FilesService) Stat(ctx context.Context, id, filePath string) (*FileEntry, error) {
	clean := path.Clean(filePath)
	entries, err := f.List(ctx, id, path.Dir(clean), 1)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.Name == path.Base(clean) {
			return &e, nil
		}
	}
	return nil, &Error{StatusCode: http.StatusNotFound, Code: CodeNotFound, Message: fmt.Sprintf("%s: no such file or directory", filePath)}
}

// MakeDir creates a directory and its parents; created is false when it
// already existed.
func (f *FilesService) MakeDir(ctx context.Context, id, dir string) (created bool, err error) {
	var out wrennapi.MkdirResult
	body := wrennapi.Mkdir{Path: dir}
	if err := f.c.call(ctx, http.MethodPost, filesPath(id)+"/mkdir", nil, body, &out); err != nil {
		return false, err
	}
	return out.Created, nil
}

// Remove deletes a file or a directory tree.
func (f *FilesService) Remove(ctx context.Context, id, filePath string) error {
	return f.c.call(ctx, http.MethodDelete, filesPath(id), url.Values{"path": {filePath}}, nil, nil)
}
