package wrenn

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Build is a template build.
type Build = wrennapi.Build

// BuildLogRecord is one record of a build's log.
type BuildLogRecord = wrennapi.BuildLogRecord

// RegistryAuth is a registry credential for a private FROM image; it is
// used for one build only and never stored.
type RegistryAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// BuildTemplateRequest starts a template build: a Wrennfile (Recipe)
// with an optional build context (a tar stream, e.g. from TarDir), or an
// import of an image or rootfs tarball (Image). Context and Image are
// streamed, never buffered.
type BuildTemplateRequest struct {
	Name         string
	Recipe       string
	Context      io.Reader
	Image        io.Reader
	RegistryAuth *RegistryAuth
	// TimeoutSec bounds the whole build (0 = the server's default, 1800).
	TimeoutSec int
}

// BuildTemplate starts a build (POST /v1/templates/builds) and returns
// it, pending. Follow it with BuildLogs.
func (c *Client) BuildTemplate(ctx context.Context, r BuildTemplateRequest) (*Build, error) {
	if r.Context != nil && r.Image != nil {
		return nil, errors.New("wrenn: a build takes a context or an image, not both")
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			fields := [][2]string{{"name", r.Name}}
			if r.Recipe != "" {
				fields = append(fields, [2]string{"recipe", r.Recipe})
			}
			if r.RegistryAuth != nil {
				b, _ := json.Marshal(r.RegistryAuth)
				fields = append(fields, [2]string{"registry_auth", string(b)})
			}
			if r.TimeoutSec > 0 {
				fields = append(fields, [2]string{"timeout_sec", strconv.Itoa(r.TimeoutSec)})
			}
			for _, f := range fields {
				if err := mw.WriteField(f[0], f[1]); err != nil {
					return err
				}
			}
			for field, src := range map[string]io.Reader{"context": r.Context, "image": r.Image} {
				if src == nil {
					continue
				}
				w, err := mw.CreateFormFile(field, field+".tar")
				if err != nil {
					return err
				}
				if _, err := io.Copy(w, src); err != nil {
					return err
				}
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	resp, err := c.do(ctx, http.MethodPost, "/v1/templates/builds", nil, pr, mw.FormDataContentType())
	_ = pr.Close()
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out Build
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("wrenn: decode build: %w", err)
	}
	return &out, nil
}

// Builds lists the team's template builds, newest first.
func (c *Client) Builds(ctx context.Context) ([]Build, error) {
	var out wrennapi.BuildList
	if err := c.call(ctx, http.MethodGet, "/v1/templates/builds", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Builds, nil
}

// Build returns one of the team's builds.
func (c *Client) Build(ctx context.Context, id string) (*Build, error) {
	var out Build
	if err := c.call(ctx, http.MethodGet, "/v1/templates/builds/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CancelBuild cancels a pending or running build.
func (c *Client) CancelBuild(ctx context.Context, id string) (*Build, error) {
	var out Build
	if err := c.call(ctx, http.MethodPost, "/v1/templates/builds/"+url.PathEscape(id)+"/cancel", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// BuildLogs calls fn for each record of a build's log; with follow it
// returns once the build has ended and every record was read (or ctx
// ends, or fn returns an error).
func (c *Client) BuildLogs(ctx context.Context, id string, follow bool, fn func(BuildLogRecord) error) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/templates/builds/"+url.PathEscape(id)+"/logs", q, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec BuildLogRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("wrenn: build log record: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("wrenn: build log: %w", err)
	}
	return nil
}

// TarDir streams directory dir as a tar (paths relative to it; symlinks
// kept as links) into the returned reader, for a build's Context or an
// import's Image. The walk runs as the reader is read.
func TarDir(dir string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(dir, p)
			if err != nil || rel == "." {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			if !info.Mode().IsRegular() && !info.IsDir() && info.Mode()&fs.ModeSymlink == 0 {
				return nil // sockets, devices: not part of a context
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return err
			}
			hdr.Name = filepath.ToSlash(rel)
			if info.IsDir() {
				hdr.Name += "/"
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		})
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}
