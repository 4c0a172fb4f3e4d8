package builds

import (
	"bytes"
	"path/filepath"
	"testing"
)

// FuzzCheckContext: SaveContext never panics on arbitrary bytes.
func FuzzCheckContext(f *testing.F) {
	f.Add(tarOf(f, tarEntry{name: "a", body: "x"}, tarEntry{name: "l", typ: '2', link: "../x"}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = SaveContext(bytes.NewReader(data), filepath.Join(t.TempDir(), "ctx.tar"), 1<<20)
	})
}
