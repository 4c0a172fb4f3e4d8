package template_test

import (
	"archive/tar"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// writeRootfsTar writes a small rootfs archive with a file of n bytes.
func writeRootfsTar(t *testing.T, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	body := []byte(strings.Repeat("wrenn template ", n/15+1))[:n]
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func sharedStores(t *testing.T) map[string]func(t *testing.T) store.Store {
	return map[string]func(t *testing.T) store.Store{
		"local": func(t *testing.T) store.Store {
			st, err := store.OpenLocal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
		"s3": func(t *testing.T) store.Store {
			st, err := store.NewS3(s3test.Start(t))
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
	}
}

func newShared(t *testing.T, st store.Store) *template.Shared {
	return &template.Shared{
		Snaps: &snapshot.Manager{Store: st, TempDir: t.TempDir()},
		Local: &template.Store{Dir: t.TempDir()},
	}
}

// TestSharedFetchOnce: a template published by host A is fetched by host
// B on first use, by exactly one download however many creates ask at
// once, and then comes from B's own directory.
func TestSharedFetchOnce(t *testing.T) {
	for name, open := range sharedStores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testutil.Context(t, testutil.Long)
			st := open(t)
			a, b := newShared(t, st), newShared(t, st)
			tarball := writeRootfsTar(t, 3<<20)
			sum, err := a.Publish(ctx, "tpl-one", tarball, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want, _ := template.FileSHA256(tarball); sum != want || len(sum) != 64 {
				t.Fatalf("checksum %q, want %q", sum, want)
			}
			var wg sync.WaitGroup
			errs := make([]error, 16)
			for i := range errs {
				wg.Go(func() {
					tm, err := b.Ensure(ctx, "tpl-one", sum)
					if err == nil {
						var got []byte
						got, err = os.ReadFile(filepath.Join(tm.Rootfs, "etc", "hello"))
						if err == nil && len(got) != 3<<20 {
							err = errors.New("wrong file size")
						}
					}
					errs[i] = err
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("Ensure %d: %v", i, err)
				}
			}
			if n := b.Fetches(); n != 1 {
				t.Fatalf("%d downloads for 16 concurrent creates, want 1", n)
			}
			if _, err := b.Ensure(ctx, "tpl-one", sum); err != nil || b.Fetches() != 1 {
				t.Fatalf("second Ensure: %v, fetches %d", err, b.Fetches())
			}
			if _, err := b.Ensure(ctx, "tpl-absent", ""); !errors.Is(err, template.ErrNotFound) {
				t.Fatalf("absent template: %v, want ErrNotFound", err)
			}
			if err := a.Delete(ctx, "tpl-one"); err != nil {
				t.Fatal(err)
			}
			if _, err := newShared(t, st).Ensure(ctx, "tpl-one", sum); !errors.Is(err, template.ErrNotFound) {
				t.Fatalf("deleted template: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestSharedCorrupt: a template whose archive was damaged in the store, or
// whose checksum is not the recorded one, is refused with ErrCorrupt and
// leaves nothing usable on the host.
func TestSharedCorrupt(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	st, err := store.OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := newShared(t, st)
	sum, err := a.Publish(ctx, "tpl-bad", writeRootfsTar(t, 1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong checksum", func(t *testing.T) {
		b := newShared(t, st)
		_, err := b.Ensure(ctx, "tpl-bad", strings.Repeat("0", 64))
		if !errors.Is(err, template.ErrCorrupt) || !strings.Contains(err.Error(), "SHA-256") {
			t.Fatalf("Ensure = %v, want ErrCorrupt naming the checksum", err)
		}
		assertNoTemplate(t, b, "tpl-bad")
	})

	t.Run("flipped byte", func(t *testing.T) {
		builds, err := filepath.Glob(filepath.Join(dir, "builds", "*"))
		if err != nil || len(builds) != 1 {
			t.Fatalf("builds %v %v", builds, err)
		}
		f, err := os.OpenFile(builds[0], os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b1 := []byte{0}
		if _, err := f.ReadAt(b1, 5000); err != nil {
			t.Fatal(err)
		}
		b1[0] ^= 0x40
		if _, err := f.WriteAt(b1, 5000); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		b := newShared(t, st)
		_, err = b.Ensure(ctx, "tpl-bad", sum)
		if !errors.Is(err, template.ErrCorrupt) {
			t.Fatalf("Ensure = %v, want ErrCorrupt", err)
		}
		assertNoTemplate(t, b, "tpl-bad")
	})
}

func assertNoTemplate(t *testing.T, s *template.Shared, name string) {
	t.Helper()
	if _, err := s.Local.Get(name); !errors.Is(err, template.ErrNotFound) {
		t.Fatalf("a refused template is usable: %v", err)
	}
	ents, _ := os.ReadDir(s.Local.Dir)
	for _, e := range ents {
		t.Errorf("left in the template directory: %s", e.Name())
	}
}

// TestSharedRunConfigTravels: a template's run config (a build's ENV,
// WORKDIR, USER, START and READY) is published with it, and a host that
// fetches the template gets it too.
func TestSharedRunConfigTravels(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	st, err := store.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, b := newShared(t, st), newShared(t, st)
	rc := template.RunConfig{
		Env: map[string]string{"APP": "1"}, Workdir: "/srv", User: "app",
		Start: []string{"python3", "-m", "http.server", "8000"}, ReadyPort: 8000, ReadyTimeoutSec: 30,
	}
	extra, err := template.RunConfigMetadata(rc)
	if err != nil {
		t.Fatal(err)
	}
	if none, err := template.RunConfigMetadata(template.RunConfig{}); err != nil || none != nil {
		t.Fatalf("zero run config: %v, %v; want nothing", none, err)
	}
	sum, err := a.Publish(ctx, "tpl-run", writeRootfsTar(t, 1<<10), extra)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Ensure(ctx, "tpl-run", sum); err != nil {
		t.Fatal(err)
	}
	got, err := b.Local.RunConfigOf("tpl-run")
	if err != nil {
		t.Fatal(err)
	}
	if got.Workdir != rc.Workdir || got.User != rc.User || got.ReadyPort != 8000 || len(got.Start) != 4 || got.Env["APP"] != "1" {
		t.Fatalf("fetched run config %+v, want %+v", got, rc)
	}
}
