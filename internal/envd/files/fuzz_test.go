package files_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/files"
)

// FuzzUploadRequest drives the upload decoder (query, Content-Type,
// multipart framing, metadata headers, body) with arbitrary input. The path
// is kept inside a scratch directory so the fuzzer cannot write elsewhere.
// Every answer must be 200 with a JSON entry array or a 4xx/507 JSON error,
// and no temp file may survive.
func FuzzUploadRequest(f *testing.F) {
	base := f.TempDir()
	h := files.NewHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), defaults.New(""))
	mp := "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhello\r\n--B--\r\n"
	f.Add("f.txt", "application/octet-stream", []byte("data"), "k", "v")
	f.Add(".", "multipart/form-data; boundary=B", []byte(mp), "", "")
	f.Add("x/y.txt", "multipart/form-data; boundary=B", []byte(mp), "Color", "blue")
	f.Add("t", "multipart/form-data; boundary=B", []byte("--B\r\nContent-Disposition: form-data; filename=\"../../e\"\r\n\r\nx"), "", "")
	f.Add("u", "multipart/form-data", []byte("x"), "", "")
	f.Add("v", "text/plain; charset", []byte(""), "", "\x00")
	f.Add("w/../../z", "", []byte("z"), strings.Repeat("k", 300), "v")
	f.Fuzz(func(t *testing.T, rel, contentType string, body []byte, metaKey, metaVal string) {
		target := filepath.Join(base, rel)
		if target != base && !strings.HasPrefix(target, base+"/") {
			target = filepath.Join(base, "escaped")
		}
		req := httptest.NewRequest(http.MethodPost, "/files?path="+url.QueryEscape(target), bytes.NewReader(body))
		if contentType != "" {
			req.Header["Content-Type"] = []string{contentType}
		}
		if metaKey != "" || metaVal != "" {
			req.Header["X-Metadata-"+metaKey] = []string{metaVal}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		switch code := rec.Code; {
		case code == http.StatusOK:
			var entries []files.EntryInfo
			if err := json.Unmarshal(rec.Body.Bytes(), &entries); err != nil || len(entries) == 0 {
				t.Fatalf("200 with body %q: %v", rec.Body.Bytes(), err)
			}
			for _, e := range entries {
				if e.Path != base && !strings.HasPrefix(e.Path, base+"/") {
					t.Fatalf("upload wrote outside the scratch directory: %s", e.Path)
				}
			}
		case code >= 400 && code < 500, code == http.StatusInsufficientStorage:
			var e struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != code || e.Message == "" {
				t.Fatalf("%d with body %q: %v", code, rec.Body.Bytes(), err)
			}
		default:
			t.Fatalf("status %d: %s", code, rec.Body.Bytes())
		}
		for _, dir := range []string{filepath.Dir(target), target} {
			des, _ := os.ReadDir(dir)
			for _, de := range des {
				if strings.HasPrefix(de.Name(), ".wrenn-upload-") {
					t.Fatalf("temp file left behind: %s", filepath.Join(dir, de.Name()))
				}
			}
		}
	})
}
