// Package snapshot owns Wrenn's block-addressed image format for memory
// files and disk images, and the engine that produces and reads it:
// processing raw files into compact images (zero blocks never stored),
// diffs against a parent generation, merging chains, publishing to a
// store.Store, garbage collection and random-access reading.
//
// Invariants:
//   - an image is a sequence of fixed-size blocks (4 KiB default, 2 MiB for
//     huge pages); its Header maps every block, in order and without gaps,
//     either to "zero" or to (build id, block index in that build's data
//     file), and carries a CRC32C over its bytes;
//   - a data file holds only stored blocks plus a CRC32C per block; every
//     read verifies the block it returns, every parse verifies the header;
//   - data files are immutable and named by a random build id; a header is
//     published only after every data file it references (the header write
//     is the commit point);
//   - a build is garbage exactly when no header in the store references it.
//
// The format is specified in docs/SNAPSHOTS.md.
package snapshot
