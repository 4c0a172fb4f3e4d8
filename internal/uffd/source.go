package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Source is the guest memory image the server pages in from. Offsets are
// byte offsets into the image, the same space as Mapping.Offset. The server
// calls it from several goroutines at once (the fault handler and the
// prefetch workers), so implementations must be safe for concurrent use.
type Source interface {
	// Size is the image size in bytes.
	Size() int64
	// BlockSize is the granularity of IsZero, a power of two.
	BlockSize() int64
	// ReadAt reads len(p) bytes at off (io.ReaderAt semantics).
	ReadAt(p []byte, off int64) (int, error)
	// IsZero reports whether the block containing off holds only zeros.
	// The server then maps the page with UFFDIO_ZEROPAGE without reading.
	IsZero(off int64) bool
}

// PrefetchOrderer is optionally implemented by a Source that carries the
// access order recorded at the previous resume (Server.AccessOrder). The
// prefetcher loads those offsets first, then every other page in address
// order.
type PrefetchOrderer interface {
	PrefetchOrder() []int64
}

// WithPrefetchOrder returns src with a prefetch order attached (offsets into
// the image, e.g. the AccessOrder of the previous resume).
func WithPrefetchOrder(src Source, order []int64) Source {
	return orderedSource{Source: src, order: order}
}

type orderedSource struct {
	Source
	order []int64
}

func (o orderedSource) PrefetchOrder() []int64 { return o.order }

// FileSource is a Source over an uncompressed raw memory image (as a VMM
// writes it), memory-mapped read-only. Zero blocks are found by comparing
// the block's content with zeros.
type FileSource struct {
	data      []byte
	blockSize int64
	zero      []byte
}

// OpenFile maps the raw image at path. blockSize (a power of two, 0 for the
// system page size) is the zero-detection granularity.
func OpenFile(path string, blockSize int64) (*FileSource, error) {
	if blockSize == 0 {
		blockSize = int64(os.Getpagesize())
	}
	if blockSize < 0 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("open image %s: block size %d is not a power of two", path, blockSize)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat image %s: %w", path, err)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("open image %s: empty file", path)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap image %s: %w", path, err)
	}
	return &FileSource{data: data, blockSize: blockSize, zero: make([]byte, blockSize)}, nil
}

// Size implements Source.
func (f *FileSource) Size() int64 { return int64(len(f.data)) }

// BlockSize implements Source.
func (f *FileSource) BlockSize() int64 { return f.blockSize }

// ReadAt implements Source.
func (f *FileSource) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read image at %d: negative offset", off)
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// IsZero implements Source.
func (f *FileSource) IsZero(off int64) bool {
	if off < 0 || off >= int64(len(f.data)) {
		return false
	}
	start := off &^ (f.blockSize - 1)
	end := min(start+f.blockSize, int64(len(f.data)))
	return bytes.Equal(f.data[start:end], f.zero[:end-start])
}

// Close unmaps the image. The source must not be in use.
func (f *FileSource) Close() error {
	if f.data == nil {
		return errors.New("close image: already closed")
	}
	err := unix.Munmap(f.data)
	f.data = nil
	if err != nil {
		return fmt.Errorf("munmap image: %w", err)
	}
	return nil
}
