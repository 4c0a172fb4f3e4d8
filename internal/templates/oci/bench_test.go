package oci

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// writeLayerFile writes a layer tar of files totalling about size bytes
// (sizes from 1 KiB to 256 KiB, in nested directories) and returns its path.
func writeLayerFile(b *testing.B, dir string, idx int, size int64) string {
	b.Helper()
	p := filepath.Join(dir, fmt.Sprintf("layer%d.tar", idx))
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	rng := rand.New(rand.NewPCG(uint64(idx), 1))
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	now := time.Now()
	var written int64
	for i := 0; written < size; i++ {
		if i%100 == 0 {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/d%d/", idx, i/100), Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}); err != nil {
				b.Fatal(err)
			}
		}
		n := 1<<10 + rng.IntN(len(buf)-1<<10)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/d%d/f%d", idx, i/100, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(n), ModTime: now}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
		written += int64(n)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkImportTarball imports a 500 MB docker-save image tarball (4
// layers) into a template store and, in the same run, extracts the same
// layers with `tar -x` as the baseline; it reports both and their ratio
// (the target is ≤ 1.5×). Run with -benchtime=3x; it needs root (owners).
func BenchmarkImportTarball(b *testing.B) {
	testutil.RequireRoot(b)
	dir := b.TempDir()
	const total = 500 << 20
	var layers []v1.Layer
	var files []string
	for i := range 4 {
		p := writeLayerFile(b, dir, i, total/4)
		files = append(files, p)
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			b.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		b.Fatal(err)
	}
	imageTar := filepath.Join(dir, "image.tar")
	tag, _ := name.NewTag("bench/image:1")
	if err := tarball.WriteToFile(imageTar, tag, img); err != nil {
		b.Fatal(err)
	}
	for _, f := range files { // only the image tarball stays
		_ = os.Remove(f)
	}
	// The baseline extracts the layers as plain tars: take them out of the
	// image tarball once.
	lay := filepath.Join(dir, "layers")
	if out, err := exec.Command("mkdir", "-p", lay).CombinedOutput(); err != nil {
		b.Fatal(err, string(out))
	}
	if out, err := exec.Command("tar", "-C", lay, "-xf", imageTar).CombinedOutput(); err != nil {
		b.Fatal(err, string(out))
	}
	// The layer files (in manifest order): GNU tar reads them compressed
	// or not, as stored.
	mf, err := im0(imageTar)
	if err != nil {
		b.Fatal(err)
	}
	var layerFiles []string
	for _, l := range mf {
		layerFiles = append(layerFiles, filepath.Join(lay, l))
	}
	b.ResetTimer()
	var ours, base time.Duration
	for i := 0; i < b.N; i++ {
		store := template.Store{Dir: filepath.Join(dir, fmt.Sprintf("store%d", i))}
		start := time.Now()
		im, err := OpenTarball(imageTar, "")
		if err != nil {
			b.Fatal(err)
		}
		c := &Cache{Store: store}
		if _, err := c.Ensure(context.Background(), im); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)

		target := filepath.Join(dir, fmt.Sprintf("tar%d", i))
		if err := os.Mkdir(target, 0o755); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		for _, lf := range layerFiles {
			if out, err := exec.Command("tar", "-x", "-p", "--numeric-owner", "-f", lf, "-C", target).CombinedOutput(); err != nil {
				b.Fatal(err, string(out))
			}
		}
		base += time.Since(start)
		_ = os.RemoveAll(store.Dir)
		_ = os.RemoveAll(target)
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "import-s/op")
	b.ReportMetric(base.Seconds()/float64(b.N), "tar-x-s/op")
	b.ReportMetric(ours.Seconds()/base.Seconds(), "ratio")
}

// im0 reads the layer file names of a docker-save tarball's manifest.
func im0(file string) ([]string, error) {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		return nil, err
	}
	return m[0].Layers, nil
}

// BenchmarkRebuildFromCache builds a template from a 200 MB image (4
// layers) served by an in-process registry twice: the first build pulls
// and unpacks every layer, the second finds the image id in the cache
// (fetching the manifest and config only) and publishes the template by
// hard links; it reports both and their ratio (the target is ≤ 10 %).
func BenchmarkRebuildFromCache(b *testing.B) {
	testutil.RequireRoot(b)
	dir := b.TempDir()
	var layers []v1.Layer
	for i := range 4 {
		l, err := tarball.LayerFromFile(writeLayerFile(b, dir, i, 50<<20))
		if err != nil {
			b.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/bench/img:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	var first, again time.Duration
	for i := 0; i < b.N; i++ {
		c := &Cache{Store: template.Store{Dir: filepath.Join(dir, fmt.Sprintf("store%d", i))}}
		build := func(tmpl string) time.Duration {
			start := time.Now()
			im, err := Remote(ctx, ref, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			res, err := c.Ensure(ctx, im)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Clone(ctx, res.Template, tmpl); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		first += build("tpl-first")
		again += build("tpl-again")
		_ = os.RemoveAll(c.Store.Dir)
	}
	b.ReportMetric(first.Seconds()/float64(b.N), "first-s/op")
	b.ReportMetric(again.Seconds()/float64(b.N), "cached-s/op")
	b.ReportMetric(again.Seconds()/first.Seconds(), "ratio")
}
