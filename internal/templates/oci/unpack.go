package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Whiteout markers (OCI image spec, "Representing Changesets").
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// LayerError is a layer that cannot be applied safely (a path with "..",
// a link that leaves the root, an entry written through a symlink that
// points out of the root, an unreadable tar). Its message is for users.
type LayerError struct {
	Layer int
	Entry string
	Msg   string
}

func (e *LayerError) Error() string {
	if e.Entry == "" {
		return fmt.Sprintf("image layer %d: %s", e.Layer+1, e.Msg)
	}
	return fmt.Sprintf("image layer %d: %q: %s", e.Layer+1, clip(e.Entry), e.Msg)
}

// Unpack applies img's layers in order to the empty directory dst, with
// whiteouts and opaque directories, and returns the image's config.
func Unpack(ctx context.Context, img v1.Image, dst string) (Config, error) {
	cfg, err := ConfigOf(img)
	if err != nil {
		return Config{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Config{}, fmt.Errorf("image layers: %w", err)
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return Config{}, err
	}
	defer root.Close()
	buf := make([]byte, 1<<20)
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return Config{}, err
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return Config{}, fmt.Errorf("image layer %d: %w", i+1, err)
		}
		err = ApplyLayer(ctx, root, i, rc, buf)
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("image layer %d: %w", i+1, cerr)
		}
		if err != nil {
			return Config{}, err
		}
	}
	return cfg, nil
}

// cleanEntry turns a tar entry name into a path relative to the root, or
// reports that it climbs out.
func cleanEntry(name string) (string, bool) {
	name = strings.TrimLeft(name, "/")
	for p := range strings.SplitSeq(name, "/") {
		if p == ".." {
			return "", false
		}
	}
	c := path.Clean("/" + name)[1:]
	if c == "" {
		c = "."
	}
	return c, true
}

// ApplyLayer applies one uncompressed layer tar to root. Every file
// operation goes through root (os.Root), so nothing is ever written
// outside it, whatever symlinks earlier entries made; an entry that would
// need that is refused. index numbers the layer in errors; buf is a copy
// buffer.
func ApplyLayer(ctx context.Context, root *os.Root, index int, r io.Reader, buf []byte) error {
	tr := tar.NewReader(r)
	added := map[string]bool{} // paths this layer wrote (opaque dirs keep them)
	type dirTime struct {
		name string
		t    time.Time
	}
	var dirs []dirTime
	lerr := func(entry, format string, args ...any) error {
		return &LayerError{Layer: index, Entry: entry, Msg: fmt.Sprintf(format, args...)}
	}
	wrap := func(entry string, err error) error {
		if err == nil {
			return nil
		}
		if strings.Contains(err.Error(), "path escapes from parent") {
			return lerr(entry, "goes through a symlink that points outside the root filesystem")
		}
		return lerr(entry, "%v", err)
	}
	for n := 0; ; n++ {
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return lerr("", "not a readable tar: %v", err)
		}
		name, ok := cleanEntry(hdr.Name)
		if !ok {
			return lerr(hdr.Name, "path climbs out of the root filesystem with \"..\"")
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		// Whiteouts.
		if base == opaqueMarker {
			if err := opaque(root, dir, added); err != nil {
				return wrap(hdr.Name, err)
			}
			continue
		}
		if victim, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
			if victim == "" || victim == "." || victim == ".." {
				return lerr(hdr.Name, "invalid whiteout")
			}
			if err := root.RemoveAll(path.Join(dir, victim)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return wrap(hdr.Name, err)
			}
			continue
		}
		if name == "." {
			if hdr.Typeflag == tar.TypeDir {
				if err := root.Chmod(".", hdr.FileInfo().Mode()&fs.ModePerm); err != nil {
					return wrap(hdr.Name, err)
				}
			}
			continue
		}
		if dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return wrap(hdr.Name, err)
			}
		}
		added[name] = true
		mode := hdr.FileInfo().Mode()
		// Replace what an earlier layer left here (a directory stays a
		// directory when the new entry is one).
		if fi, err := root.Lstat(name); err == nil {
			if !fi.IsDir() || hdr.Typeflag != tar.TypeDir {
				if err := root.RemoveAll(name); err != nil {
					return wrap(hdr.Name, err)
				}
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return wrap(hdr.Name, err)
			}
			dirs = append(dirs, dirTime{name, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // TypeRegA appears in old layers
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return wrap(hdr.Name, err)
			}
			_, err = io.CopyBuffer(f, tr, buf)
			if err == nil {
				err = setXattrs(f, hdr)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return wrap(hdr.Name, err)
			}
		case tar.TypeSymlink:
			// The target is kept as written: it is resolved inside the
			// capsule at run time, never here.
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return wrap(hdr.Name, err)
			}
		case tar.TypeLink:
			target, ok := cleanEntry(hdr.Linkname)
			if !ok || target == "." {
				return lerr(hdr.Name, "hard link target %q leaves the root filesystem", clip(hdr.Linkname))
			}
			if err := root.Link(target, name); err != nil {
				return wrap(hdr.Name, err)
			}
			continue // the link shares the target's owner and mode
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			continue // capsules get their own /dev; device nodes are skipped
		default:
			continue // pax/GNU extension headers are consumed by archive/tar
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return wrap(hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeSymlink {
			continue
		}
		// chmod after chown: chown clears set-id bits.
		if err := root.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return wrap(hdr.Name, err)
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return wrap(hdr.Name, err)
			}
		}
	}
	// Directory times last: writing into them moved them.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirs[i].name, dirs[i].t, dirs[i].t)
	}
	return nil
}

// opaque empties dir of everything lower layers put there.
func opaque(root *os.Root, dir string, added map[string]bool) error {
	f, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return root.MkdirAll(dir, 0o755)
	}
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	_ = f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if added[p] {
			continue
		}
		if err := root.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// setXattrs applies the entry's extended attributes (security.capability
// and the like) to the open file.
func setXattrs(f *os.File, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := unix.Fsetxattr(int(f.Fd()), name, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}
