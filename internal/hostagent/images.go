package hostagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/templates/oci"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// imageCaches holds one image cache per template directory, so concurrent
// imports of one image on this host unpack it once.
var imageCaches sync.Map // template dir -> *oci.Cache

func imageCache(ts *template.Store) *oci.Cache {
	c, _ := imageCaches.LoadOrStore(ts.Dir, &oci.Cache{Store: *ts})
	return c.(*oci.Cache)
}

// ImportImage implements the RPC (see the proto): pull or receive an
// image, unpack it once per image id, optionally publish it as a template.
func (s service) ImportImage(ctx context.Context, st *connect.ClientStream[pb.ImportImageRequest]) (*connect.Response[pb.ImportImageResponse], error) {
	resp, err := s.a.importImage(ctx, st)
	if err != nil {
		return nil, imageErr(err)
	}
	return connect.NewResponse(resp), nil
}

func (a *Agent) importImage(ctx context.Context, st *connect.ClientStream[pb.ImportImageRequest]) (*pb.ImportImageResponse, error) {
	ts := a.cfg.Templates
	if ts == nil {
		return nil, fmt.Errorf("import image: no template store configured: %w", runtime.ErrNotSupported)
	}
	if !st.Receive() {
		if err := st.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: import image: no header", runtime.ErrInvalidSpec)
	}
	h := st.Msg().GetHeader()
	if h == nil {
		return nil, fmt.Errorf("%w: import image: the first message must be the header", runtime.ErrInvalidSpec)
	}
	var rc template.RunConfig
	if h.GetRunConfig() != "" {
		if err := json.Unmarshal([]byte(h.GetRunConfig()), &rc); err != nil {
			return nil, fmt.Errorf("%w: run_config: %w", runtime.ErrInvalidSpec, err)
		}
	}
	if name := h.GetTemplate(); name != "" {
		if !template.ValidName(name) || oci.IsCacheName(name) {
			return nil, fmt.Errorf("%w: template name %q", runtime.ErrInvalidSpec, name)
		}
		if _, err := ts.Get(name); err == nil {
			return nil, fmt.Errorf("template %q: %w", name, runtime.ErrExists)
		}
	}
	cache := imageCache(ts)
	var img v1.Image
	if ref := h.GetRef(); ref != "" {
		var auth *oci.Auth
		if h.GetUsername() != "" || h.GetPassword() != "" {
			auth = &oci.Auth{Username: h.GetUsername(), Password: h.GetPassword()}
		}
		a.log.Info("pulling image", "ref", ref, "with_credentials", auth != nil)
		var err error
		if img, err = oci.Remote(ctx, ref, auth, nil); err != nil {
			return nil, err
		}
	} else {
		file, err := receiveTarball(ts.Dir, st)
		if err != nil {
			return nil, err
		}
		defer func() { _ = os.Remove(file) }()
		scratch, err := os.MkdirTemp(ts.Dir, ".import-layout-")
		if err != nil {
			return nil, err
		}
		defer func() { _ = os.RemoveAll(scratch) }()
		img, err = oci.OpenTarball(file, scratch)
		if errors.Is(err, oci.ErrNotImage) {
			// Today's plain root filesystem tarballs.
			if h.GetTemplate() == "" {
				return nil, fmt.Errorf("%w: a plain root filesystem tarball needs a template name", runtime.ErrInvalidSpec)
			}
			t, err := ts.ImportTarball(ctx, h.GetTemplate(), file)
			if err != nil {
				return nil, fmt.Errorf("%w: the upload is neither an image (docker save, OCI layout) nor a root filesystem tarball: %w", runtime.ErrInvalidSpec, err)
			}
			if err := a.setRunConfig(ts, t.Name, rc); err != nil {
				return nil, err
			}
			sum, err := a.publishImported(ctx, ts, t.Name, file, rc)
			if err != nil {
				return nil, err
			}
			return &pb.ImportImageResponse{Template: t.Name, SizeBytes: t.SizeBytes, PlainRootfs: true, Checksum: sum}, nil
		}
		if err != nil {
			return nil, err
		}
	}
	res, err := cache.Ensure(ctx, img)
	if err != nil {
		return nil, err
	}
	a.log.Info("image ready", "image_id", res.ID, "template", res.Template.Name, "unpacked", res.Unpacked)
	out := &pb.ImportImageResponse{
		Template: res.Template.Name, ImageId: res.ID, Unpacked: res.Unpacked, SizeBytes: res.Template.SizeBytes,
		Env: res.Config.Env, WorkingDir: res.Config.WorkingDir, User: res.Config.User,
		Entrypoint: res.Config.Entrypoint, Cmd: res.Config.Cmd,
	}
	if name := h.GetTemplate(); name != "" {
		if h.GetRunConfig() == "" {
			rc = imageRunConfig(res.Config) // the image as it is
		}
		t, err := cache.Clone(ctx, res.Template, name)
		if err != nil {
			return nil, err
		}
		if err := a.setRunConfig(ts, t.Name, rc); err != nil {
			return nil, err
		}
		if a.cfg.SharedTemplates != nil {
			work, err := os.MkdirTemp(ts.Dir, ".import-publish-")
			if err != nil {
				_ = ts.Delete(t.Name)
				return nil, fmt.Errorf("import image: %w", err)
			}
			defer func() { _ = os.RemoveAll(work) }()
			tarball := filepath.Join(work, "rootfs.tar")
			if err := ts.ExportTarball(ctx, t.Name, tarball); err != nil {
				_ = ts.Delete(t.Name)
				return nil, fmt.Errorf("import image: %w", err)
			}
			if out.Checksum, err = a.publishImported(ctx, ts, t.Name, tarball, rc); err != nil {
				return nil, err
			}
		}
		out.Template, out.SizeBytes = t.Name, t.SizeBytes
	}
	return out, nil
}

// publishImported stores template name (just imported into ts from
// tarball, with run config rc) in the shared template store when the host
// has one, so that any host can run it, and returns the archive's checksum
// ("" without a shared store). If that fails the local template is removed
// too: an unpublished template must not be recorded.
func (a *Agent) publishImported(ctx context.Context, ts *template.Store, name, tarball string, rc template.RunConfig) (string, error) {
	sh := a.cfg.SharedTemplates
	if sh == nil {
		return "", nil
	}
	start := time.Now()
	extra, err := template.RunConfigMetadata(rc)
	if err == nil {
		var sum string
		if sum, err = sh.Publish(ctx, name, tarball, extra); err == nil {
			a.log.Info("imported template published to the shared store", "template", name, "took", time.Since(start))
			return sum, nil
		}
	}
	_ = ts.Delete(name)
	return "", fmt.Errorf("import image: publish template %s: %w", name, err)
}

// setRunConfig records rc with a new template, removing the template if
// that fails (no half-made template is left).
func (a *Agent) setRunConfig(ts *template.Store, name string, rc template.RunConfig) error {
	if rc.IsZero() {
		return nil
	}
	if err := ts.SetRunConfig(name, rc); err != nil {
		_ = ts.Delete(name)
		return err
	}
	return nil
}

// receiveTarball writes the stream's data messages to a temp file in dir.
func receiveTarball(dir string, st *connect.ClientStream[pb.ImportImageRequest]) (string, error) {
	f, err := os.CreateTemp(dir, ".import-*.tar")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		_ = f.Close()
		if !ok {
			_ = os.Remove(f.Name())
		}
	}()
	var n int64
	for st.Receive() {
		d := st.Msg().GetData()
		if st.Msg().GetHeader() != nil {
			return "", fmt.Errorf("%w: import image: a second header", runtime.ErrInvalidSpec)
		}
		w, err := f.Write(d)
		n += int64(w)
		if err != nil {
			return "", err
		}
	}
	if err := st.Err(); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if n == 0 {
		return "", fmt.Errorf("%w: import image: no image reference and no tarball", runtime.ErrInvalidSpec)
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	ok = true
	return f.Name(), nil
}

// imageErr maps image errors to Connect codes; the rest go through
// toConnect.
func imageErr(err error) error {
	var pe *oci.PullError
	var le *oci.LayerError
	switch {
	case errors.As(err, &pe) && pe.Unauthorized:
		return connect.NewError(connect.CodePermissionDenied, err)
	case errors.As(err, &pe) && pe.NotFound:
		return connect.NewError(connect.CodeNotFound, err)
	case errors.As(err, &pe):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.As(err, &le):
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return toConnect(err)
}

// imageRunConfig is what capsules of an image start with: its Env,
// WorkingDir and User, and its Entrypoint+Cmd as the START process.
func imageRunConfig(c oci.Config) template.RunConfig {
	rc := template.RunConfig{Workdir: c.WorkingDir, User: template.ProcessUser(c.User), Start: c.Command()}
	for _, kv := range c.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if rc.Env == nil {
				rc.Env = map[string]string{}
			}
			rc.Env[k] = v
		}
	}
	return rc
}
