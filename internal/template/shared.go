package template

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// ErrCorrupt is returned when a template fetched from the shared store does
// not match its checksum (or is not a template archive at all). Nothing of
// it is left on the host.
var ErrCorrupt = errors.New("template archive corrupt")

// Header metadata of a template archive in the shared store.
const (
	sharedPrefix  = "template."
	metaKind      = "wrenn.kind"
	metaSHA256    = "wrenn.template.sha256"
	metaName      = "wrenn.template.name"
	metaMemSHA256 = "wrenn.template.memory_sha256"
	// metaRunConfig holds the template's run config (run.json) as JSON.
	metaRunConfig   = "wrenn.template.run_config"
	kindTemplateTar = "template-rootfs-tar"
	kindMemoryTar   = "template-memory-tar"

	// MemorySuffix names a template's memory image (a CRIU image
	// archive) beside its rootfs archive: SharedName(name)+MemorySuffix.
	MemorySuffix = ".criu"
)

// fetchTimeout bounds one fetch, which runs detached from its first
// caller's context (others may be waiting on it).
const fetchTimeout = 30 * time.Minute

// SharedName is the header name a template's archive has in the shared
// store.
func SharedName(name string) string { return sharedPrefix + name }

// Shared distributes templates between hosts through the snapshot engine
// (a local directory, or S3-compatible object storage that every host
// uses): the host that makes a template publishes its rootfs as a tar
// archive (block image, zero blocks skipped, per-block CRC32C), recording
// the archive's SHA-256; a host asked to run a template it lacks fetches it
// once — concurrent requests for the same template share one download — and
// imports it only if its SHA-256 is the expected one. A fetch that fails
// leaves nothing: the template appears in Local only when complete.
type Shared struct {
	// Snaps is the shared snapshot store. Required.
	Snaps *snapshot.Manager
	// Local is this host's template directory. Required.
	Local *Store
	// Log; default slog.Default().
	Log *slog.Logger

	group   singleflight.Group
	fetches atomic.Int64
}

func (s *Shared) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// Fetches is how many downloads this Shared has started (for tests and
// metrics: concurrent requests for one template count once).
func (s *Shared) Fetches() int64 { return s.fetches.Load() }

// FileSHA256 is the hex SHA-256 of a file's content.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Publish stores tarball (an archive ImportTarball accepts) as template
// name's archive and returns its SHA-256. Extra metadata is recorded in the
// header. The header is the commit point: a failed publish leaves no
// archive under name.
func (s *Shared) Publish(ctx context.Context, name, tarball string, extra map[string]string) (string, error) {
	return s.PublishWithMemory(ctx, name, tarball, nil, extra)
}

// PublishWithMemory is Publish for a template that also keeps its
// processes' memory (mem not nil: the driver's archive and metadata, see
// Memory). The memory archive is published first and the rootfs header,
// which records the memory archive's SHA-256, last: the returned checksum
// covers both.
func (s *Shared) PublishWithMemory(ctx context.Context, name, tarball string, mem *Memory, extra map[string]string) (string, error) {
	if !ValidName(name) {
		return "", fmt.Errorf("template: invalid name %q", name)
	}
	sum, err := FileSHA256(tarball)
	if err != nil {
		return "", err
	}
	md := map[string]string{metaKind: kindTemplateTar, metaSHA256: sum, metaName: name}
	for k, v := range extra {
		md[k] = v
	}
	if mem != nil {
		msum, err := FileSHA256(mem.Archive)
		if err != nil {
			return "", err
		}
		mmd := map[string]string{metaKind: kindMemoryTar, metaSHA256: msum, metaName: name}
		for k, v := range mem.Metadata {
			mmd[memoryMetaPrefix+k] = v
		}
		if _, err := s.Snaps.Pause(ctx, SharedName(name)+MemorySuffix, mem.Archive, snapshot.PauseOptions{Metadata: mmd}); err != nil {
			return "", fmt.Errorf("template: publish %s's memory: %w", name, err)
		}
		md[metaMemSHA256] = msum
	}
	if _, err := s.Snaps.Pause(ctx, SharedName(name), tarball, snapshot.PauseOptions{Metadata: md}); err != nil {
		if mem != nil {
			_, _ = s.Snaps.DeleteAndFree(context.WithoutCancel(ctx), SharedName(name)+MemorySuffix)
		}
		return "", fmt.Errorf("template: publish %s: %w", name, err)
	}
	// The checksum the control plane records covers the memory archive
	// too (its SHA-256 is in the header the checksum is checked against).
	if mem != nil {
		return sum + "+" + md[metaMemSHA256], nil
	}
	return sum, nil
}

// memoryMetaPrefix prefixes the driver's metadata keys in a memory
// archive's header.
const memoryMetaPrefix = "wrenn.memory."

// checksumOf is the checksum Publish returns for a header's metadata.
func checksumOf(md map[string]string) string {
	if m := md[metaMemSHA256]; m != "" {
		return md[metaSHA256] + "+" + m
	}
	return md[metaSHA256]
}

// Metadata returns the header metadata of template name's archive.
func (s *Shared) Metadata(ctx context.Context, name string) (map[string]string, error) {
	r, err := s.Snaps.Open(ctx, SharedName(name))
	if err != nil {
		return nil, s.openErr(name, err)
	}
	defer r.Close()
	return r.Metadata(), nil
}

func (s *Shared) openErr(name string, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("template %q is not in the shared template store: %w", name, ErrNotFound)
	case errors.Is(err, snapshot.ErrCorrupt):
		return fmt.Errorf("template %q in the shared template store: %w: %w", name, ErrCorrupt, err)
	}
	return fmt.Errorf("template %q: shared template store: %w", name, err)
}

// Ensure returns template name from Local, fetching it from the shared
// store first if this host lacks it. checksum, when not empty, is the
// SHA-256 the archive must have (the control plane's record); a mismatch is
// ErrCorrupt. Concurrent calls for one name share a single download.
func (s *Shared) Ensure(ctx context.Context, name, checksum string) (Template, error) {
	if t, err := s.Local.Get(name); err == nil {
		return t, nil
	}
	ch := s.group.DoChan(name, func() (any, error) {
		if t, err := s.Local.Get(name); err == nil {
			return t, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return s.fetch(fctx, name, checksum)
	})
	select {
	case <-ctx.Done():
		return Template{}, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return Template{}, res.Err
		}
		t, _ := res.Val.(Template)
		return t, nil
	}
}

func (s *Shared) fetch(ctx context.Context, name, checksum string) (Template, error) {
	if !ValidName(name) {
		return Template{}, fmt.Errorf("template %q: %w", name, ErrNotFound)
	}
	s.fetches.Add(1)
	start := time.Now()
	r, err := s.Snaps.Open(ctx, SharedName(name))
	if err != nil {
		return Template{}, s.openErr(name, err)
	}
	defer r.Close()
	md := r.Metadata()
	if md[metaKind] != kindTemplateTar || md[metaName] != name {
		return Template{}, fmt.Errorf("template %q: %w: the shared store holds %q (kind %q) under its name", name, ErrCorrupt, md[metaName], md[metaKind])
	}
	if checksum != "" && checksumOf(md) != checksum {
		return Template{}, fmt.Errorf("template %q: %w: the shared store's archive has SHA-256 %s, the control plane recorded %s", name, ErrCorrupt, checksumOf(md), checksum)
	}
	if err := os.MkdirAll(s.Local.Dir, 0o755); err != nil {
		return Template{}, fmt.Errorf("template: %w", err)
	}
	tmp, err := os.CreateTemp(s.Local.Dir, ".fetch-"+name+"-*.tar")
	if err != nil {
		return Template{}, fmt.Errorf("template: %w", err)
	}
	_ = tmp.Close()
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := r.WriteFile(ctx, tmp.Name()); err != nil {
		if errors.Is(err, snapshot.ErrCorrupt) {
			return Template{}, fmt.Errorf("template %q: %w: %w", name, ErrCorrupt, err)
		}
		return Template{}, fmt.Errorf("template %q: fetch: %w", name, err)
	}
	sum, err := FileSHA256(tmp.Name())
	if err != nil {
		return Template{}, err
	}
	if sum != md[metaSHA256] {
		return Template{}, fmt.Errorf("template %q: %w: archive SHA-256 %s, want %s", name, ErrCorrupt, sum, md[metaSHA256])
	}
	var mem *Memory
	if want := md[metaMemSHA256]; want != "" {
		mem, err = s.fetchMemory(ctx, name, want)
		if err != nil {
			return Template{}, err
		}
		defer func() { _ = os.Remove(mem.Archive) }()
	}
	t, err := s.Local.ImportWithMemory(ctx, name, tmp.Name(), mem)
	if err != nil {
		return Template{}, fmt.Errorf("template %q: import the fetched archive: %w", name, err)
	}
	if raw := md[metaRunConfig]; raw != "" {
		var rc RunConfig
		err := json.Unmarshal([]byte(raw), &rc)
		if err == nil {
			err = s.Local.SetRunConfig(name, rc)
		}
		if err != nil {
			_ = s.Local.Delete(name)
			return Template{}, fmt.Errorf("template %q: %w: run config: %w", name, ErrCorrupt, err)
		}
	}
	s.log().Info("template fetched from the shared store", "template", name, "size_bytes", t.SizeBytes, "took", time.Since(start))
	return t, nil
}

// Delete removes template name's archive (and memory image) from the shared
// store, freeing their data at once; an absent one is not an error.
func (s *Shared) Delete(ctx context.Context, name string) error {
	var errs []error
	for _, n := range []string{SharedName(name) + MemorySuffix, SharedName(name)} {
		if _, err := s.Snaps.DeleteAndFree(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fetchMemory downloads template name's memory archive into a temp file
// and checks its SHA-256.
func (s *Shared) fetchMemory(ctx context.Context, name, want string) (*Memory, error) {
	r, err := s.Snaps.Open(ctx, SharedName(name)+MemorySuffix)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("template %q: %w: its memory archive is missing from the shared store", name, ErrCorrupt)
		}
		return nil, s.openErr(name, err)
	}
	defer r.Close()
	md := r.Metadata()
	if md[metaKind] != kindMemoryTar || md[metaName] != name || md[metaSHA256] != want {
		return nil, fmt.Errorf("template %q: %w: memory archive (kind %q, SHA-256 %s) does not match the template (want %s)", name, ErrCorrupt, md[metaKind], md[metaSHA256], want)
	}
	tmp, err := os.CreateTemp(s.Local.Dir, ".fetch-"+name+"-*.criu.tar")
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	_ = tmp.Close()
	keep := false
	defer func() {
		if !keep {
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := r.WriteFile(ctx, tmp.Name()); err != nil {
		if errors.Is(err, snapshot.ErrCorrupt) {
			return nil, fmt.Errorf("template %q: memory: %w: %w", name, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("template %q: fetch memory: %w", name, err)
	}
	sum, err := FileSHA256(tmp.Name())
	if err != nil {
		return nil, err
	}
	if sum != want {
		return nil, fmt.Errorf("template %q: %w: memory archive SHA-256 %s, want %s", name, ErrCorrupt, sum, want)
	}
	mem := &Memory{Archive: tmp.Name(), Metadata: map[string]string{}}
	for k, v := range md {
		if rest, ok := strings.CutPrefix(k, memoryMetaPrefix); ok {
			mem.Metadata[rest] = v
		}
	}
	keep = true
	return mem, nil
}

// Memory is a template's memory image: an archive the runtime driver wrote
// (runtime.MemoryTemplater) and the metadata it needs to restore it.
type Memory struct {
	Archive  string
	Metadata map[string]string
}

const (
	memoryArchiveFile = "memory.tar"
	memoryMetaFile    = "memory.json"
)

// Memory returns template name's memory image, or ErrNotFound when the
// template keeps files only.
func (s Store) Memory(name string) (*Memory, error) {
	if _, err := s.Get(name); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.Dir, name)
	b, err := os.ReadFile(filepath.Join(dir, memoryMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("template %q has no memory image: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("template %q: %w", name, err)
	}
	m := &Memory{Archive: filepath.Join(dir, memoryArchiveFile)}
	if err := json.Unmarshal(b, &m.Metadata); err != nil {
		return nil, fmt.Errorf("template %q: memory metadata: %w", name, err)
	}
	return m, nil
}

// ImportWithMemory is ImportTarball that also keeps a memory image (mem
// may be nil) beside the rootfs; the template appears only when both are
// in place.
func (s Store) ImportWithMemory(ctx context.Context, name, tarball string, mem *Memory) (Template, error) {
	if mem == nil {
		return s.ImportTarball(ctx, name, tarball)
	}
	if _, err := os.Stat(tarball); err != nil {
		return Template{}, fmt.Errorf("template: %w", err)
	}
	return s.build(name, "", func(root string) error {
		if err := run(ctx, "tar", "-x", "-p", "--numeric-owner", "--xattrs", "-f", tarball, "-C", root); err != nil {
			return err
		}
		dir := filepath.Dir(root)
		if err := copyFile(mem.Archive, filepath.Join(dir, memoryArchiveFile)); err != nil {
			return err
		}
		b, err := json.Marshal(mem.Metadata)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, memoryMetaFile), b, 0o600)
	})
}

func copyFile(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return fmt.Errorf("template: %w", err)
	}
	return out.Close()
}

// RunConfigMetadata is the extra metadata Publish keeps so a host that
// fetches the template gets its run config (nil for a zero one).
func RunConfigMetadata(rc RunConfig) (map[string]string, error) {
	if rc.IsZero() {
		return nil, nil
	}
	b, err := json.Marshal(rc)
	if err != nil {
		return nil, fmt.Errorf("template: run config: %w", err)
	}
	return map[string]string{metaRunConfig: string(b)}, nil
}
