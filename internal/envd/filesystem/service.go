// Package filesystem implements envd's filesystem.Filesystem Connect service
// (stat, list, mkdir, move, remove and inotify watches) and the pieces the
// /files endpoint shares with it: path resolution (ResolvePath), acting as
// the caller's user (RunAs) and error classification (Classify).
//
// Invariants:
//   - Every operation acts as the user the caller names in its
//     `Authorization: Basic` header, else the capsule's default user. When
//     envd runs as root the filesystem work runs with that user's fsuid/fsgid
//     (see RunAs): the kernel enforces the user's permissions and new entries
//     are owned by the user. When envd is not root everything runs as envd.
//   - Paths are resolved once (ResolvePath) into absolute clean paths;
//     relative paths are relative to the acting user's home.
//   - Watchers are bounded: a polling watcher keeps at most MaxQueuedEvents
//     events between polls; every watcher stops when its stream ends, when it
//     is removed, or when the Service is closed.
package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/defaults"
	"github.com/wrenn-dev/wrenn/internal/envd/identity"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

// dirMode is the mode of directories envd creates (before umask).
const dirMode = 0o755

// Service implements filesystemconnect.FilesystemHandler.
type Service struct {
	logger   *slog.Logger
	defaults *defaults.Defaults

	// ctx is cancelled by Close; streaming watches end with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	watchers map[string]*pollWatcher
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// NewService returns the filesystem service. Call Close to stop its watchers.
func NewService(logger *slog.Logger, d *defaults.Defaults) *Service {
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{
		logger:   logger,
		defaults: d,
		ctx:      ctx,
		cancel:   cancel,
		watchers: map[string]*pollWatcher{},
	}
}

// Close stops every watcher (streaming and polling) and waits for them.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	ws := s.watchers
	s.watchers = map[string]*pollWatcher{}
	s.mu.Unlock()
	s.cancel()
	for _, w := range ws {
		w.stop()
	}
	s.wg.Wait()
}

// userFor resolves the user a request acts as.
func (s *Service) userFor(h http.Header) (*identity.User, error) {
	name, err := identity.UsernameFromHeader(h.Get("Authorization"))
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, err)
	}
	u, err := s.defaults.ResolveUser(name)
	if err != nil {
		if errors.Is(err, identity.ErrUnknownUser) {
			return nil, connect.NewError(connect.CodeUnauthenticated, err)
		}
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return u, nil
}

// resolve returns the acting user and the resolved path of a request.
func (s *Service) resolve(h http.Header, p string) (*identity.User, string, error) {
	u, err := s.userFor(h)
	if err != nil {
		return nil, "", err
	}
	abs, err := ResolvePath(p, u.Home)
	if err != nil {
		return nil, "", toConnect(err)
	}
	return u, abs, nil
}

// Stat describes one entry (a final symlink is described, not followed).
func (s *Service) Stat(_ context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	u, p, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	var e *pb.EntryInfo
	err = RunAs(u, func() (err error) {
		e, err = entryInfo(p, newNameCache())
		return err
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its missing parents, owned by the acting
// user. It fails with AlreadyExists when anything exists at the path.
func (s *Service) MakeDir(_ context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	u, p, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	var e *pb.EntryInfo
	err = RunAs(u, func() error {
		if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
			return err
		}
		if err := os.Mkdir(p, dirMode); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("path %q already exists", p))
			}
			return err
		}
		e, err = entryInfo(p, newNameCache())
		return err
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

// Move renames source to destination, creating destination's parents. Both
// must be on the same filesystem (rename(2)); an existing destination file is
// replaced, an existing non-empty destination directory is an error.
func (s *Service) Move(_ context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	u, src, err := s.resolve(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := ResolvePath(req.Msg.GetDestination(), u.Home)
	if err != nil {
		return nil, toConnect(err)
	}
	if src == "/" || dst == "/" {
		return nil, toConnect(errRoot)
	}
	var e *pb.EntryInfo
	err = RunAs(u, func() error {
		if _, err := os.Lstat(src); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), dirMode); err != nil {
			return err
		}
		if err := os.Rename(src, dst); err != nil {
			var le *os.LinkError
			if errors.As(err, &le) {
				if errors.Is(le.Err, unix.ENOTEMPTY) || errors.Is(le.Err, unix.EEXIST) {
					return connect.NewError(connect.CodeAlreadyExists,
						fmt.Errorf("move %s to %s: destination is a non-empty directory", src, dst))
				}
				return fmt.Errorf("move %s to %s: %w", src, dst, le.Err)
			}
			return err
		}
		e, err = entryInfo(dst, newNameCache())
		return err
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory. Depth 0 and 1 list the direct children; depth n
// descends n levels. Symlinks to directories are listed but not descended
// into. Subdirectories the user cannot read are listed without children.
func (s *Service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	u, p, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	depth := max(req.Msg.GetDepth(), 1)
	var entries []*pb.EntryInfo
	err = RunAs(u, func() error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%w: %s", errNotDir, p)
		}
		names := newNameCache()
		var walk func(dir string, level uint32, root bool) error
		walk = func(dir string, level uint32, root bool) error {
			des, err := os.ReadDir(dir)
			if err != nil {
				if root {
					return err
				}
				return nil
			}
			for _, de := range des {
				if err := ctx.Err(); err != nil {
					return err
				}
				child := filepath.Join(dir, de.Name())
				e, err := entryInfo(child, names)
				if err != nil {
					continue // removed while listing
				}
				entries = append(entries, e)
				if e.GetType() == pb.FileType_FILE_TYPE_DIRECTORY && level < depth {
					if err := walk(child, level+1, false); err != nil {
						return err
					}
				}
			}
			return nil
		}
		return walk(p, 1, true)
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: entries}), nil
}

// Remove deletes a file, symlink or directory tree. A missing path is
// NotFound; "/" is refused.
func (s *Service) Remove(_ context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	u, p, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if p == "/" {
		return nil, toConnect(errRoot)
	}
	err = RunAs(u, func() error {
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		return os.RemoveAll(p)
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}
