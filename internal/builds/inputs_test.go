package builds

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/templates/recipe"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

type tarEntry struct {
	name, link string
	typ        byte
	body       string
}

func tarOf(t testing.TB, es ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte(e.body))
		}
	}
	_ = tw.Close()
	return b.Bytes()
}

func TestSaveContextRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name string
		es   []tarEntry
		msg  string
	}{
		{"dotdot", []tarEntry{{name: "../x", body: "x"}}, "climbs out"},
		{"abs symlink", []tarEntry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}}, "outside the context"},
		{"rel symlink out", []tarEntry{{name: "a/b", typ: tar.TypeSymlink, link: "../../secret"}}, "outside the context"},
		{"hard link out", []tarEntry{{name: "h", typ: tar.TypeLink, link: "../x"}}, "outside the context"},
		{"device", []tarEntry{{name: "dev", typ: tar.TypeChar}}, "device node"},
		{"not a tar", nil, "not a readable tar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tarOf(t, tc.es...)
			if tc.es == nil {
				data = []byte(strings.Repeat("not a tar ", 100))
			}
			_, err := SaveContext(bytes.NewReader(data), filepath.Join(t.TempDir(), "ctx.tar"), 1<<20)
			var ce *ContextError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want a ContextError with %q", err, tc.msg)
			}
		})
	}
	// Symlinks inside the context are fine.
	ok := tarOf(t, tarEntry{name: "a/", typ: tar.TypeDir}, tarEntry{name: "a/f", body: "x"}, tarEntry{name: "a/l", typ: tar.TypeSymlink, link: "../a/f"}, tarEntry{name: "top", typ: tar.TypeSymlink, link: "a"})
	n, err := SaveContext(bytes.NewReader(ok), filepath.Join(t.TempDir(), "ctx.tar"), 1<<20)
	if err != nil || n != int64(len(ok)) {
		t.Fatalf("good context: %d bytes, %v", n, err)
	}
	// The size bound.
	big := tarOf(t, tarEntry{name: "f", body: strings.Repeat("x", 4096)})
	if _, err := SaveContext(bytes.NewReader(big), filepath.Join(t.TempDir(), "ctx.tar"), 2048); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("too big: %v", err)
	}
}

// TestSaveContextStreams: a 256 MiB context goes to disk with a bounded
// heap (the stream is never held in memory).
func TestSaveContextStreams(t *testing.T) {
	const size = 256 << 20
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		for i := range 4 {
			if err := tw.WriteHeader(&tar.Header{Name: "big" + string(rune('a'+i)), Typeflag: tar.TypeReg, Mode: 0o644, Size: size / 4}); err != nil {
				pw.CloseWithError(err)
				return
			}
			for range size / 4 / len(chunk) {
				if _, err := tw.Write(chunk); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	peak := uint64(0)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	dst := filepath.Join(t.TempDir(), "ctx.tar")
	n, err := SaveContext(pr, dst, 1<<30)
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if n < size {
		t.Fatalf("saved %d bytes, want at least %d", n, size)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != n {
		t.Fatalf("file: %v %v", fi, err)
	}
	if grew := int64(peak) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("heap grew by %d MiB while saving a 256 MiB context", grew>>20)
	}
}

func TestCopyTarget(t *testing.T) {
	for _, tc := range []struct {
		name, src, dest string
		dir             bool
		want            string
		ok              bool
	}{
		{"app.py", "app.py", "/srv/", false, "/srv/app.py", true},
		{"app.py", "app.py", "/srv/main.py", false, "/srv/main.py", true},
		{"src", "src", "/srv/code/", true, "/srv/code", true},
		{"src/a/b.py", "src", "/srv/code/", false, "/srv/code/a/b.py", true},
		{"srcx/b.py", "src", "/srv/", false, "", false},
		{"x/y", ".", "/opt/", false, "/opt/x/y", true},
	} {
		got, ok := copyTarget(tc.name, tc.src, tc.dest, tc.dir)
		if got != tc.want || ok != tc.ok {
			t.Errorf("copyTarget(%q, %q, %q) = %q %v, want %q %v", tc.name, tc.src, tc.dest, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSpecMapsOntoRecipe(t *testing.T) {
	s := Spec{From: "base", Run: []string{"echo a", "echo b"}, Env: map[string]string{"B": "2", "A": "1"}, Workdir: "/srv"}
	if err := s.Normalize(); err != nil {
		t.Fatal(err)
	}
	r, err := s.ToRecipe()
	if err != nil {
		t.Fatal(err)
	}
	if r.From != "base" || r.FromKind != recipe.FromTemplate || len(r.Steps) != 4 {
		t.Fatalf("recipe = %+v", r)
	}
	if r.Steps[0].Kind != recipe.Env || r.Steps[0].Env[0] != [2]string{"A", "1"} || r.Steps[1].Dir != "/srv" || r.Steps[3].Shell != "echo b" {
		t.Errorf("steps = %+v", r.Steps)
	}
	// A recipe spec: parse errors name the line.
	bad := Spec{Recipe: "FROM base\nRUNN x\n"}
	if err := bad.Normalize(); err == nil || !strings.Contains(err.Error(), "Wrennfile:2:1") {
		t.Errorf("bad recipe: %v", err)
	}
	mixed := Spec{Recipe: "FROM base\nRUN x\n", Run: []string{"y"}}
	if err := mixed.Normalize(); err == nil {
		t.Error("recipe with run accepted")
	}
}

// TestBuildLogBounded: the store keeps about the last MaxLogBytes of a
// build's output, in order, with step boundaries.
func TestBuildLogBounded(t *testing.T) {
	st := teststore.Open(t, "sqlite")
	ctx := testutil.Context(t, testutil.Short)
	b, err := st.CreateBuild(ctx, store.Build{TeamID: store.PlatformTeamID, TemplateName: "logs"})
	if err != nil {
		t.Fatal(err)
	}
	l := newBuildLog(st, b.ID, slog.New(slog.DiscardHandler))
	l.Systemf(1, "step 1/1: RUN yes")
	chunk := bytes.Repeat([]byte("y\n"), 50<<10) // 100 KiB
	for range 150 {                              // 15 MiB in all
		l.Output(1, StreamStdout, chunk)
	}
	l.Systemf(1, "step 1/1 done in 1s")
	l.Close()
	recs, err := st.ListBuildLogs(ctx, b.ID, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for i, r := range recs {
		total += int64(len(r.Data))
		if i > 0 && r.Seq <= recs[i-1].Seq {
			t.Fatal("records out of order")
		}
	}
	if total > MaxLogBytes || total < MaxLogBytes-maxRecordBytes {
		t.Errorf("kept %d bytes, want about %d", total, MaxLogBytes)
	}
	last := recs[len(recs)-1]
	if last.Stream != StreamSystem || !strings.Contains(string(last.Data), "done in") {
		t.Errorf("last record = %+v", last)
	}
}
