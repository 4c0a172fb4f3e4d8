package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
}

func layerTar(t testing.TB, es ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func layerOf(t testing.TB, es ...entry) v1.Layer {
	t.Helper()
	data := layerTar(t, es...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var testConfig = v1.Config{
	Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello"},
	WorkingDir: "/srv",
	User:       "1000:1000",
	Entrypoint: []string{"/bin/tool"},
	Cmd:        []string{"--serve"},
}

// testImage has three layers: a base, a layer with a whiteout, an opaque
// directory and a hard link, and a layer that overwrites a file.
func testImage(t testing.TB) v1.Image {
	t.Helper()
	l1 := layerOf(t,
		entry{name: "etc/", typ: tar.TypeDir},
		entry{name: "etc/a", body: "a1"},
		entry{name: "etc/b", body: "b1"},
		entry{name: "etc/alt", typ: tar.TypeSymlink, link: "/usr/bin/python3"},
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o4755, uid: 1000, gid: 1000},
		entry{name: "data/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "data/old1", body: "x"},
		entry{name: "data/sub/", typ: tar.TypeDir},
		entry{name: "data/sub/old2", body: "y"},
		entry{name: "usr/lib/", typ: tar.TypeDir},
		entry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
	)
	l2 := layerOf(t,
		entry{name: "etc/.wh.b"},
		entry{name: "data/.wh..wh..opq"},
		entry{name: "data/new", body: "n"},
		entry{name: "etc/a2", typ: tar.TypeLink, link: "etc/a"},
		entry{name: "lib/libx.so", body: "elf"},
	)
	l3 := layerOf(t, entry{name: "./etc/c", body: "c3"})
	img, err := mutate.AppendLayers(empty.Image, l1, l2, l3)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config = testConfig
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// checkRootfs asserts what testImage unpacks to.
func checkRootfs(t *testing.T, root string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	for p, want := range map[string]string{"etc/a": "a1", "etc/a2": "a1", "etc/c": "c3", "data/new": "n", "usr/lib/libx.so": "elf"} {
		if got := read(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, gone := range []string{"etc/b", "data/old1", "data/sub"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there (err %v)", gone, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, "etc/alt")); err != nil || l != "/usr/bin/python3" {
		t.Errorf("etc/alt -> %q, %v", l, err)
	}
	fi, err := os.Stat(filepath.Join(root, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/tool mode %v", fi.Mode())
	}
	if uid, gid := owner(fi); uid != 1000 || gid != 1000 {
		t.Errorf("bin/tool owner %d:%d", uid, gid)
	}
	a, _ := os.Stat(filepath.Join(root, "etc/a"))
	a2, _ := os.Stat(filepath.Join(root, "etc/a2"))
	if !os.SameFile(a, a2) {
		t.Error("etc/a2 is not a hard link of etc/a")
	}
	if fi, err := os.Stat(filepath.Join(root, "data")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("data mode %v %v", fi, err)
	}
}

// serve runs an in-process registry behind wrap and pushes img as repo:tag.
func serve(t *testing.T, img v1.Image, repo string, wrap func(http.Handler) http.Handler) (*httptest.Server, string) {
	t.Helper()
	h := http.Handler(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/" + repo
	return srv, ref
}

func push(t *testing.T, img v1.Image, ref string, auth authn.Authenticator) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if auth == nil {
		auth = authn.Anonymous
	}
	if err := remote.Write(r, img, remote.WithAuth(auth)); err != nil {
		t.Fatal(err)
	}
}

// blobCounter counts layer blob downloads.
type blobCounter struct{ n atomic.Int64 }

func (c *blobCounter) wrap(layers map[string]bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && layers[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]] {
				c.n.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}
}

func layerDigests(t *testing.T, img v1.Image) map[string]bool {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		m[d.String()] = true
	}
	return m
}

func TestPullUnpackAndCache(t *testing.T) {
	testutil.RequireRoot(t)
	img := testImage(t)
	var blobs blobCounter
	_, ref := serve(t, img, "team/app:v1", blobs.wrap(layerDigests(t, img)))
	push(t, img, ref, nil)
	blobs.n.Store(0)

	ctx := context.Background()
	c := &Cache{Store: template.Store{Dir: t.TempDir()}}
	// Two concurrent builds of one image: one pull.
	var wg sync.WaitGroup
	results := make([]Result, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			im, err := Remote(ctx, ref, nil, nil)
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = c.Ensure(ctx, im)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := blobs.n.Load(); got != 3 {
		t.Errorf("layer downloads for two concurrent builds = %d, want 3 (each layer once)", got)
	}
	if results[0].Unpacked == results[1].Unpacked {
		t.Errorf("unpacked = %v, %v: want exactly one unpack", results[0].Unpacked, results[1].Unpacked)
	}
	if results[0].Template.Name != results[1].Template.Name || !IsCacheName(results[0].Template.Name) {
		t.Errorf("templates %q %q", results[0].Template.Name, results[1].Template.Name)
	}
	checkRootfs(t, results[0].Template.Rootfs)
	want := Config{Env: testConfig.Env, WorkingDir: "/srv", User: "1000:1000", Entrypoint: []string{"/bin/tool"}, Cmd: []string{"--serve"}}
	if !reflect.DeepEqual(results[0].Config, want) {
		t.Errorf("config = %+v, want %+v", results[0].Config, want)
	}
	if got := results[0].Config.Command(); !reflect.DeepEqual(got, []string{"/bin/tool", "--serve"}) {
		t.Errorf("command = %q", got)
	}

	// A second build pulls no layer.
	blobs.n.Store(0)
	im, err := Remote(ctx, ref, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ensure(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	if r.Unpacked || blobs.n.Load() != 0 {
		t.Errorf("second build: unpacked %v, layer downloads %d", r.Unpacked, blobs.n.Load())
	}
	// A clone shares the data.
	cl, err := c.Clone(ctx, r.Template, "tpl-clone")
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, cl.Rootfs)
}

func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestPullBasicAuth(t *testing.T) {
	testutil.RequireRoot(t)
	img := testImage(t)
	_, ref := serve(t, img, "private/app:1", basicAuth("bob", "s3cret-pw"))
	push(t, img, ref, authn.FromConfig(authn.AuthConfig{Username: "bob", Password: "s3cret-pw"}))
	ctx := context.Background()

	for _, a := range []*Auth{nil, {Username: "bob", Password: "wrong-pw"}} {
		_, err := Remote(ctx, ref, a, nil)
		var pe *PullError
		if !errors.As(err, &pe) || !pe.Unauthorized {
			t.Fatalf("auth %v: err = %v, want an unauthorized PullError", a, err)
		}
		if strings.Contains(err.Error(), "pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	im, err := Remote(ctx, ref, &Auth{Username: "bob", Password: "s3cret-pw"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cache{Store: template.Store{Dir: t.TempDir()}}
	r, err := c.Ensure(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, r.Template.Rootfs)
	if s := fmt.Sprint(Auth{Username: "bob", Password: "s3cret-pw"}); strings.Contains(s, "s3cret") {
		t.Errorf("Auth prints its password: %s", s)
	}
}

// TestRegistryFailsMidPull: a registry that answers the manifest, then 500
// for a layer: the build fails with the reason and leaves no template
// (and no half-built directory); one 500 is retried.
func TestRegistryFailsMidPull(t *testing.T) {
	testutil.RequireRoot(t)
	img := testImage(t)
	layers := layerDigests(t, img)
	var failures atomic.Int64
	failures.Store(1 << 30)
	_, ref := serve(t, img, "flaky/app:1", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			if r.Method == http.MethodGet && layers[d] && failures.Add(-1) >= 0 {
				http.Error(w, "boom", http.StatusInternalServerError)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	failures.Store(0)
	push(t, img, ref, nil)
	failures.Store(1 << 30)
	ctx := context.Background()
	dir := t.TempDir()
	c := &Cache{Store: template.Store{Dir: dir}}
	im, err := Remote(ctx, ref, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, im); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("err = %v, want the registry's 500", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("left in the store after a failed pull: %v", left)
	}
	// One 500, then the registry recovers: the pull retries.
	failures.Store(1)
	im, err = Remote(ctx, ref, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ensure(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, r.Template.Rootfs)
}

func TestPullNotFound(t *testing.T) {
	img := testImage(t)
	_, ref := serve(t, img, "team/app:v1", nil)
	ctx := context.Background()
	var pe *PullError
	if _, err := Remote(ctx, ref, nil, nil); !errors.As(err, &pe) || !pe.NotFound {
		t.Errorf("missing image: %v", err)
	}
	if _, err := Remote(ctx, "127.0.0.1:1/nothing:here", nil, nil); !errors.As(err, &pe) || !pe.NotFound {
		t.Errorf("unreachable registry: %v", err)
	}
	if _, err := Remote(ctx, "UPPER/Case::x", nil, nil); !errors.As(err, &pe) {
		t.Errorf("bad ref: %v", err)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		es   []entry
		msg  string
	}{
		{"dotdot", []entry{{name: "../outside", body: "x"}}, "climbs out"},
		{"dotdot deep", []entry{{name: "a/../../outside", body: "x"}}, "climbs out"},
		{"hardlink out", []entry{{name: "l", typ: tar.TypeLink, link: "../outside"}}, "leaves the root"},
		{"through abs symlink", []entry{{name: "esc", typ: tar.TypeSymlink, link: "/"}, {name: "esc/outside", body: "x"}}, "outside the root"},
		{"through rel symlink", []entry{{name: "up", typ: tar.TypeSymlink, link: "../.."}, {name: "up/outside", body: "x"}}, "outside the root"},
		{"whiteout through symlink", []entry{{name: "up", typ: tar.TypeSymlink, link: ".."}, {name: "up/.wh.sentinel"}}, "outside the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			sentinel := filepath.Join(parent, "sentinel")
			if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(parent, "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			img, err := mutate.AppendLayers(empty.Image, layerOf(t, tc.es...))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Unpack(context.Background(), img, root)
			var le *LayerError
			if !errors.As(err, &le) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want a LayerError with %q", err, tc.msg)
			}
			if _, err := os.Stat(filepath.Join(parent, "outside")); err == nil {
				t.Error("a file was written outside the root")
			}
			if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep" {
				t.Error("the sentinel outside the root was touched")
			}
		})
	}
}

func TestOpenTarball(t *testing.T) {
	testutil.RequireRoot(t)
	img := testImage(t)
	dir := t.TempDir()
	ctx := context.Background()
	c := &Cache{Store: template.Store{Dir: filepath.Join(dir, "store")}}

	// docker save format.
	docker := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("example.com/app:1")
	if err := tarball.WriteToFile(docker, tag, img); err != nil {
		t.Fatal(err)
	}
	im, err := OpenTarball(docker, filepath.Join(dir, "scratch1"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ensure(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	checkRootfs(t, r.Template.Rootfs)

	// An OCI layout, tarred: the same image id, so the cache answers.
	lay := filepath.Join(dir, "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ociTar := filepath.Join(dir, "oci.tar")
	if out, err := exec.Command("tar", "-C", lay, "-cf", ociTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	scratch := filepath.Join(dir, "scratch2")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	im, err = OpenTarball(ociTar, scratch)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Ensure(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Unpacked || r2.Template.Name != r.Template.Name {
		t.Errorf("OCI layout of the same image: unpacked %v, template %q vs %q", r2.Unpacked, r2.Template.Name, r.Template.Name)
	}

	// A plain rootfs tarball and garbage are not images.
	plain := filepath.Join(dir, "plain.tar")
	if err := os.WriteFile(plain, layerTar(t, entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/x", body: "x"}), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("this is not a tarball at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{plain, garbage} {
		if _, err := OpenTarball(f, t.TempDir()); !errors.Is(err, ErrNotImage) {
			t.Errorf("%s: err = %v, want ErrNotImage", filepath.Base(f), err)
		}
	}
}

func owner(fi os.FileInfo) (int, int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
