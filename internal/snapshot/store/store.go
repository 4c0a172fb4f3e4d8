// Package store holds the object stores snapshots are published to: the
// Store interface, a local-directory backend (the default), an S3-compatible
// backend and a local chunked read cache for remote builds.
//
// A store holds two kinds of objects: build data files, named by build id and
// immutable once written, and headers, named by snapshot name and replaced
// atomically. Invariants every backend keeps:
//   - an object is either absent or complete: a crash or a cancelled context
//     in the middle of a Put never leaves a partial object visible under its
//     name;
//   - PutHeader is the commit point of a publish: callers upload every data
//     file a header references first, so a visible header never references a
//     missing build;
//   - a store does not interpret the bytes; checksums live in the objects
//     and are verified by package snapshot on every read.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrNotFound is returned (wrapped) when a header or data object is absent.
var ErrNotFound = errors.New("store: not found")

// Blob is random read access to one stored object of known size.
type Blob interface {
	io.ReaderAt
	Size() int64
	Close() error
}

// Object describes a stored data object.
type Object struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Store is where snapshot headers and build data files live.
type Store interface {
	// PutData stores the data file of build id, reading exactly size bytes
	// from r. The object becomes visible only once complete.
	PutData(ctx context.Context, id string, r io.Reader, size int64) error
	// OpenData opens a build's data file for random reads. The Blob may use
	// ctx for its reads, so it must not outlive ctx.
	OpenData(ctx context.Context, id string) (Blob, error)
	// ListData lists every data object.
	ListData(ctx context.Context) ([]Object, error)
	// DeleteData removes a data object; removing an absent one is no error.
	DeleteData(ctx context.Context, id string) error

	// PutHeader atomically creates or replaces the header called name.
	PutHeader(ctx context.Context, name string, b []byte) error
	// GetHeader returns the header called name, or an error wrapping
	// ErrNotFound.
	GetHeader(ctx context.Context, name string) ([]byte, error)
	// ListHeaders lists the names of all headers.
	ListHeaders(ctx context.Context) ([]string, error)
	// DeleteHeader removes a header; removing an absent one is no error.
	DeleteHeader(ctx context.Context, name string) error
}

// maxHeaderSize bounds a header object so a damaged store cannot make a
// reader allocate without limit.
const maxHeaderSize = 1 << 30

// ValidName reports whether s is usable as a header name or build id: 1–128
// characters from [A-Za-z0-9._-], not starting with '.'.
func ValidName(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return fmt.Errorf("store: name %q: want 1 to 128 characters", s)
	}
	if s[0] == '.' {
		return fmt.Errorf("store: name %q must not start with '.'", s)
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("store: name %q: character %q not allowed", s, c)
		}
	}
	return nil
}
