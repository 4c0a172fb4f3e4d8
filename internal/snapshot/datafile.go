package snapshot

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"os"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// A data file holds the blocks one build stored, back to back, followed by a
// table with the CRC32C of every block and a fixed footer:
//
//	block 0 … block n-1          n × blockSize bytes
//	crc32c(block i) u32 × n
//	footer: magic[8] blockShift u32 reserved u32 n u64
//	        crc32c(table) u32 crc32c(footer so far) u32
//
// The table lets a reader verify any single block on its own, which is what
// random access (page faults) needs.

const dataFooterLen = 8 + 4 + 4 + 8 + 4 + 4

var dataMagic = [8]byte{'W', 'R', 'N', 'D', 'A', 'T', 'A', 0}

// dataFileLen returns the length of a data file holding n blocks.
func dataFileLen(n, bs int64) int64 { return n*(bs+4) + dataFooterLen }

// dataWriter appends blocks to a data file.
type dataWriter struct {
	w      *bufio.Writer
	bs     int64
	crcs   []uint32
	blocks int64
	// file, when set, is the file w writes to: its dirty pages are
	// handed to writeback every writebackChunk bytes (sync_file_range),
	// so the fsync that commits the build finds little left to write
	// and the disk works while blocks are still being produced.
	file   *os.File
	synced int64
}

// writebackChunk is how much written data a dataWriter lets accumulate
// before starting its writeback.
const writebackChunk = 32 << 20

func newDataWriter(w io.Writer, bs int64) *dataWriter {
	return &dataWriter{w: bufio.NewWriterSize(w, 1<<20), bs: bs}
}

// writeBlock appends one block (exactly bs bytes) and returns its index.
func (d *dataWriter) writeBlock(p []byte) (int64, error) {
	if int64(len(p)) != d.bs {
		return 0, fmt.Errorf("data file: block of %d bytes, want %d", len(p), d.bs)
	}
	if _, err := d.w.Write(p); err != nil {
		return 0, fmt.Errorf("data file: write block: %w", err)
	}
	d.crcs = append(d.crcs, crc32.Checksum(p, castagnoli))
	d.blocks++
	d.startWriteback()
	return d.blocks - 1, nil
}

// writeBlocks appends len(p)/bs whole blocks in one write (a large write
// bypasses the bufio buffer: one copy fewer than block by block) and
// returns the first one's index.
func (d *dataWriter) writeBlocks(p []byte) (int64, error) {
	if int64(len(p))%d.bs != 0 || len(p) == 0 {
		return 0, fmt.Errorf("data file: %d bytes are not whole blocks of %d", len(p), d.bs)
	}
	if _, err := d.w.Write(p); err != nil {
		return 0, fmt.Errorf("data file: write blocks: %w", err)
	}
	first := d.blocks
	for k := int64(0); k < int64(len(p)); k += d.bs {
		d.crcs = append(d.crcs, crc32.Checksum(p[k:k+d.bs], castagnoli))
	}
	d.blocks += int64(len(p)) / d.bs
	d.startWriteback()
	return first, nil
}

// startWriteback hands written data to writeback every writebackChunk
// bytes (best effort: an error only means the final fsync does all the
// work).
func (d *dataWriter) startWriteback() {
	if d.file == nil {
		return
	}
	if out := d.blocks*d.bs - int64(d.w.Buffered()); out-d.synced >= writebackChunk {
		_ = unix.SyncFileRange(int(d.file.Fd()), d.synced, out-d.synced, unix.SYNC_FILE_RANGE_WRITE)
		d.synced = out
	}
}

// finish writes the checksum table and footer, flushes, and returns the
// file's total length.
func (d *dataWriter) finish() (int64, error) {
	table := make([]byte, 4*len(d.crcs))
	for i, c := range d.crcs {
		binary.LittleEndian.PutUint32(table[4*i:], c)
	}
	footer := make([]byte, 0, dataFooterLen)
	footer = append(footer, dataMagic[:]...)
	footer = binary.LittleEndian.AppendUint32(footer, uint32(bits.TrailingZeros64(uint64(d.bs))))
	footer = binary.LittleEndian.AppendUint32(footer, 0)
	footer = binary.LittleEndian.AppendUint64(footer, uint64(d.blocks))
	footer = binary.LittleEndian.AppendUint32(footer, crc32.Checksum(table, castagnoli))
	footer = binary.LittleEndian.AppendUint32(footer, crc32.Checksum(footer, castagnoli))
	if _, err := d.w.Write(table); err != nil {
		return 0, fmt.Errorf("data file: write checksum table: %w", err)
	}
	if _, err := d.w.Write(footer); err != nil {
		return 0, fmt.Errorf("data file: write footer: %w", err)
	}
	if err := d.w.Flush(); err != nil {
		return 0, fmt.Errorf("data file: flush: %w", err)
	}
	return dataFileLen(d.blocks, d.bs), nil
}

// dataFile reads verified blocks from a data file.
type dataFile struct {
	blob store.Blob
	bs   int64
	n    int64
	crcs []uint32
}

// openDataFile reads and verifies the footer and checksum table of blob,
// which must be wantLen bytes long with blocks of bs bytes.
func openDataFile(blob store.Blob, bs, wantLen int64) (*dataFile, error) {
	size := blob.Size()
	if size != wantLen {
		return nil, corruptf("data file is %d bytes, header says %d", size, wantLen)
	}
	if size < dataFooterLen {
		return nil, corruptf("data file of %d bytes is truncated", size)
	}
	footer := make([]byte, dataFooterLen)
	if err := readFull(blob, footer, size-dataFooterLen); err != nil {
		return nil, fmt.Errorf("data file: read footer: %w", err)
	}
	if !bytes.Equal(footer[:8], dataMagic[:]) {
		return nil, corruptf("bad data file magic")
	}
	if got, want := crc32.Checksum(footer[:dataFooterLen-4], castagnoli), binary.LittleEndian.Uint32(footer[dataFooterLen-4:]); got != want {
		return nil, corruptf("data file footer checksum mismatch")
	}
	if shift := binary.LittleEndian.Uint32(footer[8:]); int64(1)<<min(shift, 62) != bs {
		return nil, corruptf("data file block shift %d does not match block size %d", shift, bs)
	}
	n := int64(binary.LittleEndian.Uint64(footer[16:]) & (1<<62 - 1))
	if dataFileLen(n, bs) != size {
		return nil, corruptf("data file of %d bytes cannot hold %d blocks", size, n)
	}
	table := make([]byte, 4*n)
	if err := readFull(blob, table, n*bs); err != nil {
		return nil, fmt.Errorf("data file: read checksum table: %w", err)
	}
	if crc32.Checksum(table, castagnoli) != binary.LittleEndian.Uint32(footer[24:]) {
		return nil, corruptf("data file checksum table mismatch")
	}
	crcs := make([]uint32, n)
	for i := range crcs {
		crcs[i] = binary.LittleEndian.Uint32(table[4*i:])
	}
	return &dataFile{blob: blob, bs: bs, n: n, crcs: crcs}, nil
}

// readBlocks reads count blocks starting at block i into p (count×bs bytes)
// and verifies each block's checksum.
func (d *dataFile) readBlocks(p []byte, i, count int64) error {
	if i < 0 || count < 0 || i+count > d.n || int64(len(p)) != count*d.bs {
		return corruptf("data block range [%d,+%d) outside the file's %d blocks", i, count, d.n)
	}
	if err := readFull(d.blob, p, i*d.bs); err != nil {
		return fmt.Errorf("data file: read blocks [%d,+%d): %w", i, count, err)
	}
	for k := range count {
		blk := p[k*d.bs : (k+1)*d.bs]
		if crc32.Checksum(blk, castagnoli) != d.crcs[i+k] {
			return corruptf("data block %d checksum mismatch", i+k)
		}
	}
	return nil
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corruptf("short read: %d of %d bytes at %d", n, len(p), off)
	}
	return err
}
