package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// DefaultMaxDiffGenerations is the longest chain of builds an image may
// reference before it is merged. 1 merges on every re-pause: every
// published image is self-contained.
const DefaultMaxDiffGenerations = 1

// Publish uploads img to st under name: the data file first, the header
// last. The header write is the commit point, so a crash or cancellation at
// any moment leaves the previous header under name (if any) in place and
// readable, and never a header whose data is missing. The image's local data
// file is left for the caller to remove.
func Publish(ctx context.Context, st store.Store, name string, img *Image) error {
	hdr, err := img.Header.Marshal()
	if err != nil {
		return err
	}
	if l, ok := st.(dataLinker); ok && img.DataPath != "" {
		// A local store takes the finished (fsynced) data file by hard
		// link when it is on the same file system: no second write.
		if err := l.LinkData(ctx, img.Header.BuildID.String(), img.DataPath); err != nil {
			return fmt.Errorf("snapshot: publish %s: data: %w", name, err)
		}
	} else if img.DataPath != "" {
		f, err := os.Open(img.DataPath)
		if err != nil {
			return fmt.Errorf("snapshot: publish %s: %w", name, err)
		}
		err = st.PutData(ctx, img.Header.BuildID.String(), f, img.DataLen)
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("snapshot: publish %s: data: %w", name, err)
		}
	}
	if err := st.PutHeader(ctx, name, hdr); err != nil {
		return fmt.Errorf("snapshot: publish %s: header: %w", name, err)
	}
	return nil
}

// dataLinker is a store that can adopt a local data file (store.Local).
type dataLinker interface {
	LinkData(ctx context.Context, id, src string) error
}

// Manager runs the pause-side flow over one store: process, diff against a
// parent, merge long chains, publish, and collect garbage.
type Manager struct {
	Store store.Store
	// MaxDiffGenerations bounds the chain length (builds referenced by one
	// header); 0 means DefaultMaxDiffGenerations.
	MaxDiffGenerations int
	// TempDir holds data files while they are built; "" means os.TempDir().
	TempDir string
	// Log receives progress; nil discards.
	Log *slog.Logger

	// gcMu keeps GC from sweeping while a publish is between uploading data
	// and committing its header.
	gcMu sync.RWMutex
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// PauseOptions describe one snapshot to take.
type PauseOptions struct {
	// Parent names the header the raw file diffs against; "" takes a full
	// image.
	Parent string
	// Dirty optionally marks the blocks changed since Parent.
	Dirty *Bitmap
	// BlockSize, Metadata and PrefetchOrder as in Options.
	BlockSize     int64
	Metadata      map[string]string
	PrefetchOrder []int64
}

// Pause processes the raw file at rawPath (a memory file or disk image) and
// publishes it as name, diffing against o.Parent when set and merging when
// the chain would exceed MaxDiffGenerations. It returns the published header.
func (m *Manager) Pause(ctx context.Context, name, rawPath string, o PauseOptions) (*Header, error) {
	if err := store.ValidName(name); err != nil {
		return nil, err
	}
	m.gcMu.RLock()
	defer m.gcMu.RUnlock()
	start := time.Now()
	opts := Options{BlockSize: o.BlockSize, TempDir: m.TempDir, Metadata: o.Metadata, PrefetchOrder: o.PrefetchOrder}
	var (
		img    *Image
		parent *Reader
		err    error
	)
	if o.Parent == "" {
		img, err = ProcessFile(ctx, rawPath, opts)
	} else {
		parent, err = OpenReader(ctx, m.Store, o.Parent)
		if err != nil {
			return nil, fmt.Errorf("snapshot: pause %s: open parent: %w", name, err)
		}
		defer parent.Close()
		img, err = ProcessMemfileWithParent(ctx, rawPath, parent, o.Dirty, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: pause %s: %w", name, err)
	}
	defer func(diff *Image) { _ = diff.Remove() }(img)
	diff := img.Header.Counts()

	maxGen := m.MaxDiffGenerations
	if maxGen <= 0 {
		maxGen = DefaultMaxDiffGenerations
	}
	if len(img.Header.Builds) > maxGen {
		merged, err := m.merge(ctx, img)
		if err != nil {
			return nil, fmt.Errorf("snapshot: pause %s: %w", name, err)
		}
		defer func() { _ = merged.Remove() }()
		img = merged
	}
	if err := Publish(ctx, m.Store, name, img); err != nil {
		return nil, err
	}
	m.log().Info("snapshot published", "name", name, "build", img.Header.BuildID.String(),
		"generation", img.Header.Generation, "size", img.Header.Size,
		"diff_stored_blocks", diff.Stored, "chain", len(img.Header.Builds), "took", time.Since(start))
	return img.Header, nil
}

// merge reads img (its own build from the local data file, the rest from
// the store) and collapses it into a self-contained image.
func (m *Manager) merge(ctx context.Context, img *Image) (*Image, error) {
	open := func(id BuildID) (store.Blob, error) {
		if id == img.Header.BuildID {
			return store.OpenFile(img.DataPath)
		}
		return m.Store.OpenData(ctx, id.String())
	}
	r, err := NewReader(img.Header, open)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	defer r.Close()
	return Merge(ctx, r, Options{TempDir: m.TempDir})
}

// OpenFile returns a Blob reading a local file, for use in an OpenFunc.
func OpenFile(path string) (store.Blob, error) { return store.OpenFile(path) }

// Open opens the snapshot called name.
func (m *Manager) Open(ctx context.Context, name string) (*Reader, error) {
	return OpenReader(ctx, m.Store, name)
}

// Delete removes the header called name; its builds become garbage once no
// other header references them.
func (m *Manager) Delete(ctx context.Context, name string) error {
	return m.Store.DeleteHeader(ctx, name)
}

// DeleteAndFree deletes header name and, at once, the data of the builds
// it referenced that no other header references — whatever their age. It
// is for a caller that knows the snapshot is superseded or its capsule
// gone: unlike GC's sweep of unreferenced data, these builds were
// committed, so no publish in flight can be about to reference them except
// one diffing against this very header, which the caller must have ruled
// out (the container driver holds the capsule's lock). A header that does
// not exist is no error. If another header cannot be read nothing is
// freed (GC frees it later).
func (m *Manager) DeleteAndFree(ctx context.Context, name string) (GCStats, error) {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	var stats GCStats
	h, err := ReadHeader(ctx, m.Store, name)
	if errors.Is(err, store.ErrNotFound) {
		return stats, nil
	}
	if err := m.Store.DeleteHeader(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return stats, fmt.Errorf("snapshot: delete %s: %w", name, err)
	}
	if err != nil {
		// Unreadable: the header is gone now; its data waits for GC.
		return stats, nil //nolint:nilerr // a damaged header frees nothing by itself
	}
	names, err := m.Store.ListHeaders(ctx)
	if err != nil {
		return stats, fmt.Errorf("snapshot: free %s: %w", name, err)
	}
	live := map[string]bool{}
	for _, n := range names {
		oh, err := ReadHeader(ctx, m.Store, n)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return stats, fmt.Errorf("snapshot: free %s: refusing: %w", name, err)
		}
		stats.Headers++
		for _, b := range oh.Builds {
			live[b.ID.String()] = true
		}
	}
	stats.LiveBuilds = len(live)
	sizes := map[string]int64{}
	if objs, err := m.Store.ListData(ctx); err == nil {
		for _, o := range objs {
			sizes[o.Name] = o.Size
		}
	}
	for _, b := range h.Builds {
		id := b.ID.String()
		if live[id] {
			continue
		}
		if err := m.Store.DeleteData(ctx, id); err != nil {
			return stats, fmt.Errorf("snapshot: free %s: %w", name, err)
		}
		stats.Deleted = append(stats.Deleted, id)
		stats.DeletedBytes += sizes[id]
	}
	return stats, nil
}

// GC runs GC over the manager's store, excluding concurrent Pause calls of
// this manager.
func (m *Manager) GC(ctx context.Context, minAge time.Duration) (GCStats, error) {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	return GC(ctx, m.Store, minAge)
}

// GCStats reports one collection.
type GCStats struct {
	Headers      int      `json:"headers"`
	LiveBuilds   int      `json:"live_builds"`
	Deleted      []string `json:"deleted"`
	DeletedBytes int64    `json:"deleted_bytes"`
}

// GC deletes every data object no header references (mark and sweep). Data
// objects younger than minAge are kept, so a publish that has uploaded its
// data but not yet committed its header (possibly on another host) is not
// swept. If any header cannot be read or parsed nothing is deleted: a
// damaged header must not turn live data into garbage.
func GC(ctx context.Context, st store.Store, minAge time.Duration) (GCStats, error) {
	var stats GCStats
	// List data before headers: a build uploaded after this listing is not a
	// candidate, and one committed before the header listing is marked.
	objs, err := st.ListData(ctx)
	if err != nil {
		return stats, fmt.Errorf("snapshot: gc: %w", err)
	}
	names, err := st.ListHeaders(ctx)
	if err != nil {
		return stats, fmt.Errorf("snapshot: gc: %w", err)
	}
	live := map[string]bool{}
	for _, n := range names {
		h, err := ReadHeader(ctx, st, n)
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return stats, fmt.Errorf("snapshot: gc: refusing to sweep: %w", err)
		}
		stats.Headers++
		for _, b := range h.Builds {
			live[b.ID.String()] = true
		}
	}
	stats.LiveBuilds = len(live)
	now := time.Now()
	for _, o := range objs {
		if live[o.Name] || now.Sub(o.ModTime) < minAge {
			continue
		}
		if err := st.DeleteData(ctx, o.Name); err != nil {
			return stats, fmt.Errorf("snapshot: gc: %w", err)
		}
		stats.Deleted = append(stats.Deleted, o.Name)
		stats.DeletedBytes += o.Size
	}
	return stats, nil
}
