package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

const (
	// MaxQueuedEvents bounds the events a polling watcher keeps between two
	// GetWatcherEvents calls; later events are dropped (and counted in the log).
	MaxQueuedEvents = 10_000
	// defaultKeepalive is the WatchDir keepalive interval when the client
	// sends no Keepalive-Ping-Interval header (seconds), as E2B clients do.
	defaultKeepalive = 50 * time.Second
	keepaliveHeader  = "Keepalive-Ping-Interval"
)

// Filesystem magic numbers (statfs f_type) of network filesystems, which are
// refused unless allow_network_mounts is set: inotify does not see changes
// made by other clients of such a mount.
var networkFS = map[int64]string{
	0x6969:     "nfs",
	0x517b:     "smb",
	0xff534d42: "cifs",
	0xfe534d42: "smb2",
	0x00c36400: "ceph",
	0x5346414f: "afs",
	0x564c:     "ncp",
	0x01021997: "9p",
}

// watch is one inotify watch on a directory (and its subdirectories when
// recursive). Only its run loop touches w after start.
type watch struct {
	root         string
	recursive    bool
	includeEntry bool
	user         *identity.User
	w            *fsnotify.Watcher
	names        *nameCache
}

type watchParams struct {
	path         string
	recursive    bool
	includeEntry bool
	allowNetwork bool
}

func (s *Service) startWatch(h http.Header, p watchParams) (*watch, error) {
	u, root, err := s.resolve(h, p.path)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("create inotify watcher: %w", err))
	}
	w := &watch{root: root, recursive: p.recursive, includeEntry: p.includeEntry, user: u, w: fw, names: newNameCache()}
	err = RunAs(u, func() error {
		st, err := os.Stat(root)
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%w: %s", errNotDir, root)
		}
		if !p.allowNetwork {
			var sfs unix.Statfs_t
			if err := unix.Statfs(root, &sfs); err == nil {
				if name, ok := networkFS[int64(sfs.Type)]; ok { //nolint:unconvert // Type is int64 on amd64 but not everywhere
					return connect.NewError(connect.CodeFailedPrecondition,
						fmt.Errorf("%s is on a network filesystem (%s); set allow_network_mounts to watch it", root, name))
				}
			}
		}
		if err := fw.Add(root); err != nil {
			return fmt.Errorf("watch %s: %w", root, err)
		}
		if p.recursive {
			w.addTree(root)
		}
		return nil
	})
	if err != nil {
		_ = fw.Close()
		return nil, toConnect(err)
	}
	return w, nil
}

// addTree adds watches for every directory below dir (not following
// symlinks). Directories that vanish or cannot be read are skipped. It must
// run as the watch's user.
func (w *watch) addTree(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			return nil
		}
		if d.IsDir() && p != dir {
			_ = w.w.Add(p)
		}
		return nil
	})
}

var ops = []struct {
	op fsnotify.Op
	t  pb.EventType
}{
	{fsnotify.Create, pb.EventType_EVENT_TYPE_CREATE},
	{fsnotify.Write, pb.EventType_EVENT_TYPE_WRITE},
	{fsnotify.Remove, pb.EventType_EVENT_TYPE_REMOVE},
	{fsnotify.Rename, pb.EventType_EVENT_TYPE_RENAME},
	{fsnotify.Chmod, pb.EventType_EVENT_TYPE_CHMOD},
}

// UploadTempPrefix starts the names of the temp files /files uploads are
// written to before being renamed into place. Watchers never report them.
const UploadTempPrefix = ".wrenn-upload-"

// convert turns one fsnotify event into protocol events (one per operation
// bit), naming entries relative to the watched root. A directory created
// under a recursive watch gets watched itself. Events for upload temp files
// are dropped, and a regular file that appears already holding data (an
// upload renamed into place, or any file moved in) is reported as create
// followed by write, so clients that wait for a write event after writing a
// file see one, as they would if the file had been written in place.
func (w *watch) convert(ev fsnotify.Event) []*pb.FilesystemEvent {
	if strings.HasPrefix(filepath.Base(ev.Name), UploadTempPrefix) {
		return nil
	}
	name, err := filepath.Rel(w.root, ev.Name)
	if err != nil || strings.HasPrefix(name, "..") {
		name = ev.Name
	}
	var entry *pb.EntryInfo
	if ev.Has(fsnotify.Create) || (w.includeEntry && !ev.Has(fsnotify.Remove) && !ev.Has(fsnotify.Rename)) {
		_ = RunAs(w.user, func() error {
			e, err := entryInfo(ev.Name, w.names)
			if err != nil {
				return err
			}
			entry = e
			if w.recursive && ev.Has(fsnotify.Create) && e.GetType() == pb.FileType_FILE_TYPE_DIRECTORY {
				if err := w.w.Add(ev.Name); err == nil {
					w.addTree(ev.Name)
				}
			}
			return nil
		})
	}
	op := ev.Op
	if op.Has(fsnotify.Create) && entry.GetType() == pb.FileType_FILE_TYPE_FILE && entry.GetSize() > 0 {
		op |= fsnotify.Write
	}
	var out []*pb.FilesystemEvent
	for _, o := range ops {
		if !op.Has(o.op) {
			continue
		}
		fe := &pb.FilesystemEvent{Name: name, Type: o.t}
		if w.includeEntry && entry != nil && o.t != pb.EventType_EVENT_TYPE_REMOVE && o.t != pb.EventType_EVENT_TYPE_RENAME {
			fe.Entry = entry
		}
		out = append(out, fe)
	}
	return out
}

// run delivers events to emit until ctx ends, the watched directory itself is
// removed or renamed (after its event is delivered), or the watcher fails.
// tick, when non-nil, is called on every keepalive interval. Overflow of the
// kernel queue is logged and watching continues.
func (w *watch) run(ctx context.Context, s *Service, keepalive time.Duration, emit func(*pb.FilesystemEvent) error, tick func() error) error {
	var tc <-chan time.Time
	if tick != nil && keepalive > 0 {
		t := time.NewTicker(keepalive)
		defer t.Stop()
		tc = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.w.Events:
			if !ok {
				return nil
			}
			for _, fe := range w.convert(ev) {
				if err := emit(fe); err != nil {
					return err
				}
			}
			if ev.Name == w.root && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				return nil // the watched directory itself is gone
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				s.logger.Warn("inotify queue overflow; events were lost", "path", w.root)
				continue
			}
			return connect.NewError(connect.CodeInternal, fmt.Errorf("watching %s: %w", w.root, err))
		case <-tc:
			if err := tick(); err != nil {
				return err
			}
		}
	}
}

func keepaliveInterval(h http.Header) time.Duration {
	if v := h.Get(keepaliveHeader); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 3600 {
			return time.Duration(n) * time.Second
		}
	}
	return defaultKeepalive
}

// WatchDir streams a start event, then filesystem events and keepalives,
// until the client goes away or the Service closes.
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	m := req.Msg
	w, err := s.startWatch(req.Header(), watchParams{path: m.GetPath(), recursive: m.GetRecursive(), includeEntry: m.GetIncludeEntry(), allowNetwork: m.GetAllowNetworkMounts()})
	if err != nil {
		return err
	}
	defer func() { _ = w.w.Close() }()
	if !s.track() {
		return connect.NewError(connect.CodeUnavailable, errors.New("filesystem service is closed"))
	}
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	return w.run(ctx, s, keepaliveInterval(req.Header()),
		func(fe *pb.FilesystemEvent) error {
			return stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: fe}})
		},
		func() error {
			return stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}})
		})
}

// track registers a running watcher with the service's WaitGroup unless the
// service is closed.
func (s *Service) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// pollWatcher is a watch whose events queue up for GetWatcherEvents.
type pollWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	events  []*pb.FilesystemEvent
	dropped int
	err     error
}

func (p *pollWatcher) stop() {
	p.cancel()
	<-p.done
}

// CreateWatcher starts a polling watcher and returns its id.
func (s *Service) CreateWatcher(_ context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	m := req.Msg
	w, err := s.startWatch(req.Header(), watchParams{path: m.GetPath(), recursive: m.GetRecursive(), includeEntry: m.GetIncludeEntry(), allowNetwork: m.GetAllowNetworkMounts()})
	if err != nil {
		return nil, err
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	ctx, cancel := context.WithCancel(s.ctx)
	pw := &pollWatcher{cancel: cancel, done: make(chan struct{})}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		_ = w.w.Close()
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("filesystem service is closed"))
	}
	s.watchers[id] = pw
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		defer close(pw.done)
		defer func() { _ = w.w.Close() }()
		err := w.run(ctx, s, 0, func(fe *pb.FilesystemEvent) error {
			pw.mu.Lock()
			defer pw.mu.Unlock()
			if len(pw.events) >= MaxQueuedEvents {
				if pw.dropped == 0 {
					s.logger.Warn("watcher queue full; dropping events until polled", "watcher_id", id, "path", w.root)
				}
				pw.dropped++
				return nil
			}
			pw.events = append(pw.events, fe)
			return nil
		}, nil)
		if err != nil {
			pw.mu.Lock()
			pw.err = err
			pw.mu.Unlock()
		}
	}()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

func (s *Service) lookupWatcher(id string) (*pollWatcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pw, ok := s.watchers[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return pw, nil
}

// GetWatcherEvents drains the events queued since the previous call. A
// watcher that failed reports its error once its queue is empty.
func (s *Service) GetWatcherEvents(_ context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	pw, err := s.lookupWatcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.mu.Lock()
	events := pw.events
	pw.events = nil
	pw.dropped = 0
	werr := pw.err
	pw.mu.Unlock()
	if len(events) == 0 && werr != nil {
		return nil, werr
	}
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: events}), nil
}

// RemoveWatcher stops a polling watcher and forgets its queue.
func (s *Service) RemoveWatcher(_ context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	id := req.Msg.GetWatcherId()
	s.mu.Lock()
	pw, ok := s.watchers[id]
	delete(s.watchers, id)
	s.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	pw.stop()
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}
