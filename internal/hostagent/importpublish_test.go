package hostagent_test

import (
	"archive/tar"
	"bytes"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestImportPublishesToSharedStore: a template published by ImportImage
// (an image tarball, and a plain rootfs tarball) goes to the shared
// template store with its run config, and the response carries the
// checksum another host fetches it by (issue 16: templates of pure
// imports and bare-image builds are not pinned to the importing host).
func TestImportPublishesToSharedStore(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	snaps, err := store.OpenLocal(filepath.Join(dir, "shared"))
	if err != nil {
		t.Fatal(err)
	}
	newShared := func(local string) *template.Shared {
		tmp := filepath.Join(dir, local+"-tmp")
		for _, d := range []string{tmp, filepath.Join(dir, local)} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		return &template.Shared{Snaps: &snapshot.Manager{Store: snaps, TempDir: tmp}, Local: &template.Store{Dir: filepath.Join(dir, local)}}
	}
	shA := newShared("host-a")
	d := newDirs(t)
	d.subnet = netip.MustParsePrefix("10.137.0.0/16")
	h := startHost(t, d, func(c *hostagent.Config) {
		c.Templates, c.SharedTemplates = shA.Local, shA
	})

	// An image: one layer, Env/WorkingDir/Cmd in its config.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, e := range []struct{ name, body string }{{"app/", ""}, {"app/hello.txt", "hello from the image"}} {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		if e.body == "" {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"GREETING=hi"}
	cf.Config.WorkingDir = "/app"
	cf.Config.Cmd = []string{"sleep", "600"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	imgTar := filepath.Join(dir, "image.tar")
	tag, _ := name.NewTag("example.com/publish:1")
	if err := tarball.WriteToFile(imgTar, tag, img); err != nil {
		t.Fatal(err)
	}
	// A plain root filesystem tarball, with a run config from the caller.
	plainRoot := filepath.Join(dir, "plain")
	if err := os.MkdirAll(filepath.Join(plainRoot, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plainRoot, "etc", "plain"), []byte("plain rootfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	plainTar := filepath.Join(dir, "plain.tar")
	if out, err := exec.Command("tar", "-C", plainRoot, "--numeric-owner", "-cf", plainTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}

	importAs := func(file, tmpl, runConfig string) *pb.ImportImageResponse {
		t.Helper()
		st := h.client.ImportImage(ctx)
		if err := st.Send(&pb.ImportImageRequest{Msg: &pb.ImportImageRequest_Header{Header: &pb.ImportImageHeader{Template: tmpl, RunConfig: runConfig}}}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&pb.ImportImageRequest{Msg: &pb.ImportImageRequest_Data{Data: b}}); err != nil {
			t.Fatal(err)
		}
		res, err := st.CloseAndReceive()
		if err != nil {
			t.Fatalf("ImportImage %s: %v", tmpl, err)
		}
		return res.Msg
	}
	imgRes := importAs(imgTar, "tpl-image", "")
	plainRes := importAs(plainTar, "tpl-plain", `{"env":{"MODE":"plain"}}`)
	for _, r := range []*pb.ImportImageResponse{imgRes, plainRes} {
		if r.GetChecksum() == "" {
			t.Fatalf("ImportImage of %s on a host with a shared store returned no checksum: %v", r.GetTemplate(), r)
		}
	}

	// Host B (another local template store, the same shared store) fetches
	// both by checksum, with their files and run configs.
	shB := newShared("host-b")
	ti, err := shB.Ensure(ctx, "tpl-image", imgRes.GetChecksum())
	if err != nil {
		t.Fatalf("host B fetch tpl-image: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(ti.Rootfs, "app", "hello.txt")); err != nil || string(b) != "hello from the image" {
		t.Fatalf("fetched image template: %q, %v", b, err)
	}
	rc, err := shB.Local.RunConfigOf("tpl-image")
	if err != nil || rc.Env["GREETING"] != "hi" || rc.Workdir != "/app" || !slices.Equal(rc.Start, []string{"sleep", "600"}) {
		t.Fatalf("fetched image template's run config = %+v, %v", rc, err)
	}
	tp, err := shB.Ensure(ctx, "tpl-plain", plainRes.GetChecksum())
	if err != nil {
		t.Fatalf("host B fetch tpl-plain: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(tp.Rootfs, "etc", "plain")); err != nil || string(b) != "plain rootfs" {
		t.Fatalf("fetched plain template: %q, %v", b, err)
	}
	if rc, err := shB.Local.RunConfigOf("tpl-plain"); err != nil || rc.Env["MODE"] != "plain" {
		t.Fatalf("fetched plain template's run config = %+v, %v", rc, err)
	}

	// Deleting with shared removes the archive too.
	if _, err := h.client.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Template: "tpl-plain", Shared: true})); err != nil {
		t.Fatal(err)
	}
	if _, err := shA.Metadata(ctx, "tpl-plain"); err == nil {
		t.Fatal("the shared archive of a deleted template is still there")
	}
}
