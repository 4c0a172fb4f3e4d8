package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Local is a Store in a directory:
//
//	ROOT/headers/NAME   headers
//	ROOT/builds/ID      data files
//	ROOT/tmp/           objects being written
//
// Every object is written to ROOT/tmp, fsynced, renamed into place and the
// target directory fsynced, so after a crash an object is either absent or
// complete. Leftovers in tmp are removed by CleanTemp.
type Local struct {
	root string
}

// OpenLocal opens (creating if needed) a local store rooted at dir.
func OpenLocal(dir string) (*Local, error) {
	for _, sub := range []string{"headers", "builds", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			return nil, fmt.Errorf("store: open local %s: %w", dir, err)
		}
	}
	return &Local{root: dir}, nil
}

// Root returns the store's directory.
func (l *Local) Root() string { return l.root }

// DataPath returns the path of a build's data file (which may not exist).
func (l *Local) DataPath(id string) string { return filepath.Join(l.root, "builds", id) }

func (l *Local) headerPath(name string) string { return filepath.Join(l.root, "headers", name) }

// ctxReader makes a copy stop when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// writeAtomic writes size bytes from r to dst through a temp file.
func (l *Local) writeAtomic(ctx context.Context, dst string, r io.Reader, size int64) (err error) {
	tmp, err := os.CreateTemp(filepath.Join(l.root, "tmp"), "put-*")
	if err != nil {
		return fmt.Errorf("store: create temp: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, io.LimitReader(ctxReader{ctx, r}, size))
	if err != nil {
		return fmt.Errorf("store: write %s: %w", filepath.Base(dst), err)
	}
	if n != size {
		return fmt.Errorf("store: write %s: got %d bytes, want %d", filepath.Base(dst), n, size)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("store: fsync %s: %w", filepath.Base(dst), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", filepath.Base(dst), err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("store: rename into place: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: open dir for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: fsync dir %s: %w", dir, err)
	}
	return nil
}

// PutData implements Store.
func (l *Local) PutData(ctx context.Context, id string, r io.Reader, size int64) error {
	if err := ValidName(id); err != nil {
		return err
	}
	return l.writeAtomic(ctx, l.DataPath(id), r, size)
}

// LinkData makes the data file at src available as build id, by hard link
// when src is on the same file system and by copy otherwise.
func (l *Local) LinkData(ctx context.Context, id, src string) error {
	if err := ValidName(id); err != nil {
		return err
	}
	dst := l.DataPath(id)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	if err := os.Link(src, dst); err == nil {
		return syncDir(filepath.Dir(dst))
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("store: link data: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: link data: %w", err)
	}
	return l.writeAtomic(ctx, dst, f, st.Size())
}

type fileBlob struct {
	*os.File
	size int64
}

func (f fileBlob) Size() int64 { return f.size }

// OpenFile opens a local file as a Blob.
func OpenFile(path string) (Blob, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return fileBlob{File: f, size: st.Size()}, nil
}

// OpenData implements Store.
func (l *Local) OpenData(_ context.Context, id string) (Blob, error) {
	if err := ValidName(id); err != nil {
		return nil, err
	}
	f, err := os.Open(l.DataPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: data %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open data: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("store: stat data: %w", err)
	}
	return fileBlob{File: f, size: st.Size()}, nil
}

// ListData implements Store.
func (l *Local) ListData(_ context.Context) ([]Object, error) {
	ents, err := os.ReadDir(filepath.Join(l.root, "builds"))
	if err != nil {
		return nil, fmt.Errorf("store: list data: %w", err)
	}
	out := make([]Object, 0, len(ents))
	for _, e := range ents {
		if !e.Type().IsRegular() || ValidName(e.Name()) != nil {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store: list data: %w", err)
		}
		out = append(out, Object{Name: e.Name(), Size: info.Size(), ModTime: info.ModTime()})
	}
	return out, nil
}

// DeleteData implements Store.
func (l *Local) DeleteData(_ context.Context, id string) error {
	if err := ValidName(id); err != nil {
		return err
	}
	if err := os.Remove(l.DataPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: delete data: %w", err)
	}
	return nil
}

// PutHeader implements Store.
func (l *Local) PutHeader(ctx context.Context, name string, b []byte) error {
	if err := ValidName(name); err != nil {
		return err
	}
	return l.writeAtomic(ctx, l.headerPath(name), strings.NewReader(string(b)), int64(len(b)))
}

// GetHeader implements Store.
func (l *Local) GetHeader(_ context.Context, name string) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	f, err := os.Open(l.headerPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: header %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open header: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHeaderSize+1))
	if err != nil {
		return nil, fmt.Errorf("store: read header %s: %w", name, err)
	}
	if len(b) > maxHeaderSize {
		return nil, fmt.Errorf("store: header %s exceeds %d bytes", name, maxHeaderSize)
	}
	return b, nil
}

// ListHeaders implements Store.
func (l *Local) ListHeaders(_ context.Context) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(l.root, "headers"))
	if err != nil {
		return nil, fmt.Errorf("store: list headers: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && ValidName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// DeleteHeader implements Store.
func (l *Local) DeleteHeader(_ context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := os.Remove(l.headerPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: delete header: %w", err)
	}
	return syncDir(filepath.Join(l.root, "headers"))
}

// CleanTemp removes temporary files older than age left by interrupted
// writes and returns how many it removed.
func (l *Local) CleanTemp(age time.Duration) (int, error) {
	dir := filepath.Join(l.root, "tmp")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("store: clean temp: %w", err)
	}
	n := 0
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
			n++
		}
	}
	return n, nil
}
