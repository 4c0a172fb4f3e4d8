package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultChunkSize is the unit a Cache fetches from the remote store.
const DefaultChunkSize = 4 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Cache wraps a remote Store and keeps the data files it reads on local
// disk, fetched on demand in fixed-size chunks with ranged reads: a random
// read of a few bytes fetches only the chunk(s) it touches, once.
//
// On disk, build ID is DIR/ID.cache (a sparse file of the object's size)
// and DIR/ID.idx, an append-only log of (chunk index u64, crc32c u32)
// records. A chunk is logged only after its bytes are written and fsynced;
// when a build is first opened the log is replayed and every logged chunk
// re-verified, so a crash can cost a refetch but never serve bad bytes. One
// Cache owns its directory; two processes must not share one.
//
// Every other Store method passes through; DeleteData also drops the cached
// copy.
type Cache struct {
	Store
	dir   string
	chunk int64

	mu     sync.Mutex
	builds map[string]*cachedBuild

	fetches, fetchedBytes, hits atomic.Int64
}

// NewCache returns a Cache over remote in dir, fetching chunkSize bytes at a
// time (0 means DefaultChunkSize).
func NewCache(remote Store, dir string, chunkSize int64) (*Cache, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: cache dir: %w", err)
	}
	return &Cache{Store: remote, dir: dir, chunk: chunkSize, builds: map[string]*cachedBuild{}}, nil
}

// CacheStats counts remote fetches and cache hits.
type CacheStats struct {
	Fetches      int64 // ranged reads sent to the remote store
	FetchedBytes int64
	Hits         int64 // chunk lookups served from local disk
}

// Stats returns counters since the Cache was created.
func (c *Cache) Stats() CacheStats {
	return CacheStats{Fetches: c.fetches.Load(), FetchedBytes: c.fetchedBytes.Load(), Hits: c.hits.Load()}
}

type cachedBuild struct {
	c        *Cache
	id       string
	size     int64
	data     *os.File
	idx      *os.File
	mu       sync.Mutex
	present  []bool
	inflight map[int64]chan struct{}
}

// OpenData implements Store: reads go through the local chunk cache.
func (c *Cache) OpenData(ctx context.Context, id string) (Blob, error) {
	remote, err := c.Store.OpenData(ctx, id)
	if err != nil {
		return nil, err
	}
	b, err := c.build(id, remote.Size())
	if err != nil {
		_ = remote.Close()
		return nil, err
	}
	return &cacheBlob{b: b, remote: remote}, nil
}

func (c *Cache) build(id string, size int64) (*cachedBuild, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.builds[id]; ok {
		if b.size != size {
			return nil, fmt.Errorf("store: cache: build %s changed size (%d, now %d)", id, b.size, size)
		}
		return b, nil
	}
	b, err := c.load(id, size)
	if err != nil {
		return nil, err
	}
	c.builds[id] = b
	return b, nil
}

// load opens (or creates) the cache files of a build and replays its log.
func (c *Cache) load(id string, size int64) (*cachedBuild, error) {
	dataPath := filepath.Join(c.dir, id+".cache")
	data, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: cache: %w", err)
	}
	idx, err := os.OpenFile(filepath.Join(c.dir, id+".idx"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		_ = data.Close()
		return nil, fmt.Errorf("store: cache: %w", err)
	}
	b := &cachedBuild{
		c: c, id: id, size: size, data: data, idx: idx,
		present:  make([]bool, (size+c.chunk-1)/c.chunk),
		inflight: map[int64]chan struct{}{},
	}
	fail := func(err error) (*cachedBuild, error) {
		_ = data.Close()
		_ = idx.Close()
		return nil, fmt.Errorf("store: cache %s: %w", id, err)
	}
	if st, err := data.Stat(); err != nil {
		return fail(err)
	} else if st.Size() != size {
		// New, or left from an object of another size: start over.
		if err := data.Truncate(0); err != nil {
			return fail(err)
		}
		if err := data.Truncate(size); err != nil {
			return fail(err)
		}
		if err := idx.Truncate(0); err != nil {
			return fail(err)
		}
		return b, nil
	}
	log, err := io.ReadAll(idx)
	if err != nil {
		return fail(err)
	}
	buf := make([]byte, c.chunk)
	for len(log) >= 12 {
		i := int64(binary.LittleEndian.Uint64(log))
		sum := binary.LittleEndian.Uint32(log[8:])
		log = log[12:]
		if i < 0 || i >= int64(len(b.present)) || b.present[i] {
			continue
		}
		p := buf[:b.chunkLen(i)]
		if _, err := data.ReadAt(p, i*c.chunk); err != nil && !errors.Is(err, io.EOF) {
			return fail(err)
		}
		b.present[i] = crc32.Checksum(p, castagnoli) == sum
	}
	return b, nil
}

func (b *cachedBuild) chunkLen(i int64) int64 { return min(b.c.chunk, b.size-i*b.c.chunk) }

// ensure makes chunk i present, fetching it through remote if needed.
func (b *cachedBuild) ensure(i int64, remote Blob) error {
	for {
		b.mu.Lock()
		if b.present[i] {
			b.mu.Unlock()
			b.c.hits.Add(1)
			return nil
		}
		if ch, ok := b.inflight[i]; ok {
			b.mu.Unlock()
			<-ch // another reader is fetching it; then re-check
			continue
		}
		ch := make(chan struct{})
		b.inflight[i] = ch
		b.mu.Unlock()

		err := b.fetch(i, remote)
		b.mu.Lock()
		if err == nil {
			b.present[i] = true
		}
		delete(b.inflight, i)
		close(ch)
		b.mu.Unlock()
		return err
	}
}

func (b *cachedBuild) fetch(i int64, remote Blob) error {
	p := make([]byte, b.chunkLen(i))
	b.c.fetches.Add(1)
	n, err := remote.ReadAt(p, i*b.c.chunk)
	if n != len(p) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("store: cache: fetch %s chunk %d: %w", b.id, i, err)
	}
	b.c.fetchedBytes.Add(int64(n))
	if _, err := b.data.WriteAt(p, i*b.c.chunk); err != nil {
		return fmt.Errorf("store: cache: write chunk: %w", err)
	}
	if err := b.data.Sync(); err != nil {
		return fmt.Errorf("store: cache: fsync chunk: %w", err)
	}
	rec := binary.LittleEndian.AppendUint64(nil, uint64(i))
	rec = binary.LittleEndian.AppendUint32(rec, crc32.Checksum(p, castagnoli))
	if _, err := b.idx.Write(rec); err != nil {
		return fmt.Errorf("store: cache: log chunk: %w", err)
	}
	return nil
}

// cacheBlob is one opened handle on a cached build.
type cacheBlob struct {
	b      *cachedBuild
	remote Blob
}

func (h *cacheBlob) Size() int64  { return h.b.size }
func (h *cacheBlob) Close() error { return h.remote.Close() }

func (h *cacheBlob) ReadAt(p []byte, off int64) (int, error) {
	b := h.b
	if off < 0 {
		return 0, fmt.Errorf("store: cache read %s: negative offset", b.id)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > b.size-off {
		p = p[:b.size-off]
	}
	if len(p) == 0 {
		return 0, nil
	}
	for i := off / b.c.chunk; i <= (off+int64(len(p))-1)/b.c.chunk; i++ {
		if err := b.ensure(i, h.remote); err != nil {
			return 0, err
		}
	}
	n, err := b.data.ReadAt(p, off)
	if n == len(p) && n < want {
		return n, io.EOF
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("store: cache read %s: %w", b.id, err)
	}
	return n, nil
}

// DeleteData implements Store: deletes remotely and drops the local copy.
func (c *Cache) DeleteData(ctx context.Context, id string) error {
	if err := c.Store.DeleteData(ctx, id); err != nil {
		return err
	}
	return c.Evict(id)
}

// Evict drops the local copy of a build. Handles opened before keep reading
// from the unlinked files.
func (c *Cache) Evict(id string) error {
	if err := ValidName(id); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.builds, id)
	c.mu.Unlock()
	var errs []error
	for _, ext := range []string{".cache", ".idx"} {
		if err := os.Remove(filepath.Join(c.dir, id+ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: cache evict %s: %w", id, err)
	}
	return nil
}

// Usage returns the bytes the cache directory's files occupy on disk.
func (c *Cache) Usage() (int64, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return 0, fmt.Errorf("store: cache usage: %w", err)
	}
	var n int64
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			continue
		}
		n += allocated(info)
	}
	return n, nil
}

// allocated returns the bytes a (possibly sparse) file occupies.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// Trim evicts whole builds, least recently used first (by the time their
// chunk log was last appended to), until the cache occupies at most
// maxBytes. It returns the evicted build ids.
func (c *Cache) Trim(maxBytes int64) ([]string, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("store: cache trim: %w", err)
	}
	type entry struct {
		id    string
		bytes int64
		used  time.Time
	}
	byID := map[string]*entry{}
	var total int64
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			continue
		}
		name := e.Name()
		ext := filepath.Ext(name)
		if ext != ".cache" && ext != ".idx" {
			continue
		}
		id := strings.TrimSuffix(name, ext)
		en := byID[id]
		if en == nil {
			en = &entry{id: id}
			byID[id] = en
		}
		en.bytes += allocated(info)
		total += allocated(info)
		if ext == ".idx" {
			en.used = info.ModTime()
		}
	}
	list := make([]*entry, 0, len(byID))
	for _, en := range byID {
		list = append(list, en)
	}
	slices.SortFunc(list, func(a, b *entry) int { return a.used.Compare(b.used) })
	var evicted []string
	for _, en := range list {
		if total <= maxBytes {
			break
		}
		if err := c.Evict(en.id); err != nil {
			return evicted, err
		}
		total -= en.bytes
		evicted = append(evicted, en.id)
	}
	return evicted, nil
}

// Close releases the cache's open files.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for id, b := range c.builds {
		errs = append(errs, b.data.Close(), b.idx.Close())
		delete(c.builds, id)
	}
	return errors.Join(errs...)
}
