package wrenn_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// TestFilesSizedRoundTrip: an upload with a known length (which envd
// splices into the file) reads back identical, with the written entry's
// metadata in the upload's answer; the user parameter picks the owner.
func TestFilesSizedRoundTrip(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	size := 48 << 20
	if testing.Short() {
		size = 3 << 20
	}
	data := make([]byte, size)
	_, _ = rand.Read(data)
	e, err := c.Files.Write(ctx, capsule.ID, "/tmp/sized/blob", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != int64(size) || e.Type != "file" || e.Path != "/tmp/sized/blob" || e.Owner == "" || e.Permissions == "" {
		t.Errorf("Write = %+v; want the file's entry with its %d bytes, owner and permissions", e, size)
	}
	h := sha256.New()
	n, err := c.Files.Read(ctx, capsule.ID, "/tmp/sized/blob", h)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("read back %d bytes with a different hash; want %d identical bytes", n, size)
	}

	// ?user=root writes as root (a body large enough to be spliced).
	rootData := strings.Repeat("owned by root\n", 200000)
	u := wrennURL + "/v1/capsules/" + url.PathEscape(capsule.ID) + "/files?" + url.Values{"path": {"/tmp/rootfile"}, "user": {"root"}}.Encode()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, u, strings.NewReader(rootData))
	req.Header.Set("X-API-Key", wrennKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var entry wrenn.FileEntry
	if err := json.NewDecoder(res.Body).Decode(&entry); err != nil || res.StatusCode != 200 {
		t.Fatalf("PUT as root: status %d, %v", res.StatusCode, err)
	}
	if entry.Owner != "root" || entry.Size != int64(len(rootData)) {
		t.Errorf("PUT as root = %+v; want owner root", entry)
	}
}

// TestFilesErrors: a missing file, a directory and an unknown user are
// the API's structured errors.
func TestFilesErrors(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	var apiErr *wrenn.Error
	if _, err := c.Files.Read(ctx, capsule.ID, "/no/such/file", &bytes.Buffer{}); !wrenn.IsNotFound(err) {
		t.Errorf("Read missing: %v; want not_found", err)
	}
	_, err := c.Files.Read(ctx, capsule.ID, "/tmp", &bytes.Buffer{})
	if !errors.As(err, &apiErr) || apiErr.Code != "invalid_argument" || !strings.Contains(apiErr.Message, "is a directory") {
		t.Errorf("Read a directory: %v; want invalid_argument … is a directory", err)
	}
	// Small bodies go through the agent's reverse proxy, large sized ones
	// are spliced (envd answers before it has read the body).
	for _, n := range []int{1, 8 << 20} {
		_, err = c.Files.Write(ctx, capsule.ID, "/tmp", bytes.NewReader(make([]byte, n)))
		if !errors.As(err, &apiErr) || apiErr.Code != "invalid_argument" || !strings.Contains(apiErr.Message, "is a directory") {
			t.Errorf("Write %d bytes onto a directory: %v; want invalid_argument … is a directory", n, err)
		}
	}
	u := wrennURL + "/v1/capsules/" + url.PathEscape(capsule.ID) + "/files?" + url.Values{"path": {"/etc/hostname"}, "user": {"nosuchuser"}}.Encode()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("X-API-Key", wrennKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct{ Code, Message string }
	_ = json.NewDecoder(res.Body).Decode(&body)
	if res.StatusCode != http.StatusForbidden || body.Code != "permission_denied" {
		t.Errorf("GET as an unknown user: %d %+v; want 403 permission_denied", res.StatusCode, body)
	}
}
