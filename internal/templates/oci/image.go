// Package oci turns OCI and Docker images into template root filesystems:
// it pulls them from registries (go-containerregistry), anonymously or with
// per-build credentials, opens `docker save` and OCI-layout tarballs,
// applies the layers in order with whiteouts and opaque directories, and
// caches the result in a host's template store keyed by the image's
// config digest (its image ID), so a second build from the same image
// pulls no layer and two concurrent builds of it pull once.
//
// Invariants:
//   - Nothing is written outside the destination root: every file
//     operation goes through an os.Root; a layer entry with "..", a hard
//     link leaving the root or an entry written through a symlink pointing
//     outside the root fails the unpack (LayerError).
//   - A cached image appears in the template store only when complete
//     (template.Store.Build: built aside, renamed into place).
//   - Credentials are never logged and never part of an error message.
package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Config is what a template keeps of an image's config.
type Config struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Command is the image's Entrypoint followed by its Cmd (what `docker
// run` starts), or nil.
func (c Config) Command() []string {
	if len(c.Entrypoint) == 0 && len(c.Cmd) == 0 {
		return nil
	}
	return append(append([]string(nil), c.Entrypoint...), c.Cmd...)
}

// ConfigOf reads an image's config.
func ConfigOf(img v1.Image) (Config, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return Config{}, fmt.Errorf("image config: %w", err)
	}
	c := cf.Config
	return Config{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}, nil
}

// Auth is a registry credential given for one build.
type Auth struct {
	Username string
	Password string
}

// String never shows the password.
func (a Auth) String() string { return "Auth{" + a.Username + ", ***}" }

// PullError is a registry failure whose message is fit for users: it
// names the image and the kind of failure, never a credential.
type PullError struct {
	Ref string
	Msg string
	// NotFound: the image or its repository does not exist; Unauthorized:
	// the registry refused the credentials (or wants some).
	NotFound, Unauthorized bool
}

func (e *PullError) Error() string { return fmt.Sprintf("image %s: %s", e.Ref, e.Msg) }

// Remote returns the image ref names in its registry (for linux/amd64
// when it is an index). Only the manifest is fetched here; layers are
// fetched when read.
func Remote(ctx context.Context, ref string, auth *Auth, rt http.RoundTripper) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, &PullError{Ref: ref, Msg: "not a valid image reference: " + err.Error()}
	}
	a := authn.Anonymous
	if auth != nil && (auth.Username != "" || auth.Password != "") {
		a = authn.FromConfig(authn.AuthConfig{Username: auth.Username, Password: auth.Password})
	}
	opts := []remote.Option{
		remote.WithContext(ctx), remote.WithAuth(a),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
	}
	if rt != nil {
		opts = append(opts, remote.WithTransport(rt))
	}
	img, err := remote.Image(r, opts...)
	if err != nil {
		return nil, pullError(ref, err)
	}
	return img, nil
}

// pullError maps a registry error to a PullError.
func pullError(ref string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return &PullError{Ref: ref, Msg: fmt.Sprintf("the registry refused access (HTTP %d): check registry_auth", te.StatusCode), Unauthorized: true}
		case http.StatusNotFound:
			return &PullError{Ref: ref, Msg: "not found in its registry", NotFound: true}
		}
		return &PullError{Ref: ref, Msg: fmt.Sprintf("the registry answered HTTP %d", te.StatusCode)}
	}
	msg := err.Error()
	if strings.Contains(msg, "no such host") || strings.Contains(msg, "connection refused") || strings.Contains(msg, "i/o timeout") {
		return &PullError{Ref: ref, Msg: "the registry cannot be reached: " + msg, NotFound: true}
	}
	return &PullError{Ref: ref, Msg: msg}
}

// ErrNotImage: a tarball holds neither a `docker save` image nor an OCI
// layout (it may be a plain root filesystem tarball).
var ErrNotImage = errors.New("not an image tarball")

// OpenTarball opens a `docker save` tarball (manifest.json) or an
// OCI-layout tarball (oci-layout + index.json). An OCI layout is
// unpacked into scratch (a directory the caller removes) because its
// blobs are addressed by path; a docker-save tarball is read in place.
// ErrNotImage when the tarball is neither.
func OpenTarball(file, scratch string) (v1.Image, error) {
	kind, err := sniff(file)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "docker":
		img, err := tarball.ImageFromPath(file, nil)
		if err != nil {
			return nil, fmt.Errorf("docker-save tarball: %w", err)
		}
		return img, nil
	case "oci":
		if err := extractPlain(file, scratch); err != nil {
			return nil, err
		}
		p, err := layout.FromPath(scratch)
		if err != nil {
			return nil, fmt.Errorf("OCI layout: %w", err)
		}
		idx, err := p.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("OCI layout: %w", err)
		}
		return imageOf(idx, 0)
	}
	return nil, ErrNotImage
}

// imageOf picks the linux/amd64 (or the only unlabelled) image of an index.
func imageOf(idx v1.ImageIndex, depth int) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != "amd64") {
			continue
		}
		switch {
		case d.MediaType.IsImage():
			return idx.Image(d.Digest)
		case d.MediaType.IsIndex() && depth < 4:
			inner, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("OCI layout: %w", err)
			}
			return imageOf(inner, depth+1)
		}
	}
	return nil, fmt.Errorf("OCI layout: no linux/amd64 image in index.json")
}

// sniff looks at a tarball's top-level names.
func sniff(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var hasIndex, hasLayout bool
	for range 4096 {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", ErrNotImage // compressed or not a tar at all
		}
		switch strings.TrimPrefix(hdr.Name, "./") {
		case "manifest.json":
			return "docker", nil
		case "index.json":
			hasIndex = true
		case "oci-layout":
			hasLayout = true
		}
	}
	if hasIndex && hasLayout {
		return "oci", nil
	}
	return "", ErrNotImage
}

// extractPlain unpacks regular files and directories of a tarball into
// dir (for OCI layouts), refusing paths that climb out.
func extractPlain(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("OCI layout tarball: %w", err)
		}
		name, ok := cleanEntry(hdr.Name)
		if !ok {
			return &LayerError{Layer: -1, Entry: hdr.Name, Msg: "path climbs out with \"..\""}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if d := filepath.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			w, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}
