package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// snapshotHeaderName is the header name a snapshot directory keeps its
// image under. A snapshot directory is a local store (see store.Local).
const snapshotHeaderName = "image"

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Process, inspect and restore snapshot images (memory files and disk images)",
		Long: "A snapshot directory is a local snapshot store holding one image: headers/image and the\n" +
			"data files (builds/ID) it references. See docs/SNAPSHOTS.md for the format.",
	}
	cmd.AddCommand(newSnapshotProcessCmd(), newSnapshotInspectCmd(), newSnapshotRestoreCmd())
	return cmd
}

// snapshotInfo is what `snapshot inspect` prints.
type snapshotInfo struct {
	Size            int64             `json:"size"`
	BlockSize       int64             `json:"block_size"`
	StoredBytes     int64             `json:"stored_bytes"`
	ReferencedBytes int64             `json:"referenced_bytes"`
	Generation      uint64            `json:"generation"`
	BuildID         string            `json:"build_id"`
	BaseBuildID     string            `json:"base_build_id,omitempty"`
	Builds          []string          `json:"builds"`
	Blocks          snapshot.Counts   `json:"blocks"`
	Mappings        int               `json:"mappings"`
	PrefetchBlocks  int               `json:"prefetch_blocks"`
	Metadata        map[string]string `json:"metadata,omitempty"`
}

func infoOf(h *snapshot.Header) snapshotInfo {
	c := h.Counts()
	info := snapshotInfo{
		Size:           h.Size,
		BlockSize:      h.BlockSize,
		StoredBytes:    c.Stored * h.BlockSize,
		Generation:     h.Generation,
		BuildID:        h.BuildID.String(),
		Builds:         []string{},
		Blocks:         c,
		Mappings:       len(h.Mappings),
		PrefetchBlocks: len(h.PrefetchOrder),
		Metadata:       h.Metadata,
	}
	if !h.BaseBuildID.IsZero() {
		info.BaseBuildID = h.BaseBuildID.String()
	}
	for _, b := range h.Builds {
		info.Builds = append(info.Builds, b.ID.String())
		info.ReferencedBytes += b.DataLen
	}
	return info
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newSnapshotProcessCmd() *cobra.Command {
	var (
		parentDir string
		blockSize int64
		maxGen    int
		meta      []string
	)
	cmd := &cobra.Command{
		Use:   "process MEMFILE OUTDIR",
		Short: "Turn a raw memory file or disk image into a snapshot directory (zero blocks are not stored)",
		Long: "Processes MEMFILE into OUTDIR. With --parent, only blocks that differ from the parent\n" +
			"snapshot are stored and the parent's data files are linked into OUTDIR, so OUTDIR stays\n" +
			"self-sufficient; chains longer than --max-diff-generations are merged into one image.\n" +
			"Prints the result as `snapshot inspect` does.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			raw, outDir := args[0], args[1]
			if blockSize != snapshot.DefaultBlockSize && blockSize != snapshot.HugeBlockSize {
				return fmt.Errorf("--block-size must be %d or %d", snapshot.DefaultBlockSize, snapshot.HugeBlockSize)
			}
			md := map[string]string{}
			for _, kv := range meta {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--meta %q: want KEY=VALUE", kv)
				}
				md[k] = v
			}
			if len(md) == 0 {
				md = nil
			}
			out, err := store.OpenLocal(outDir)
			if err != nil {
				return err
			}
			opts := snapshot.Options{BlockSize: blockSize, TempDir: filepath.Join(out.Root(), "tmp"), Metadata: md}
			var img *snapshot.Image
			if parentDir == "" {
				img, err = snapshot.ProcessFile(ctx, raw, opts)
				if err != nil {
					return err
				}
			} else {
				img, err = processWithParent(cmd, raw, parentDir, out, opts, cmd.Flags().Changed("block-size"))
				if err != nil {
					return err
				}
			}
			defer func(first *snapshot.Image) { _ = first.Remove() }(img)
			if maxGen <= 0 {
				maxGen = snapshot.DefaultMaxDiffGenerations
			}
			if len(img.Header.Builds) > maxGen {
				r, err := snapshot.NewReader(img.Header, func(id snapshot.BuildID) (store.Blob, error) {
					if id == img.Header.BuildID {
						return snapshot.OpenFile(img.DataPath)
					}
					return out.OpenData(ctx, id.String())
				})
				if err != nil {
					return err
				}
				merged, err := snapshot.Merge(ctx, r, snapshot.Options{TempDir: filepath.Join(out.Root(), "tmp")})
				_ = r.Close()
				if err != nil {
					return err
				}
				defer func() { _ = merged.Remove() }()
				img = merged
			}
			if err := snapshot.Publish(ctx, out, snapshotHeaderName, img); err != nil {
				return err
			}
			// Drop data files the new image no longer references.
			if _, err := snapshot.GC(ctx, out, 0); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), infoOf(img.Header))
		},
	}
	cmd.Flags().StringVar(&parentDir, "parent", "", "snapshot directory of the parent image: store only the blocks that changed")
	cmd.Flags().Int64Var(&blockSize, "block-size", snapshot.DefaultBlockSize, "block size in bytes: 4096 or 2097152")
	cmd.Flags().IntVar(&maxGen, "max-diff-generations", snapshot.DefaultMaxDiffGenerations, "merge when the image would reference more builds than this")
	cmd.Flags().StringArrayVar(&meta, "meta", nil, "KEY=VALUE metadata to record in the header (repeatable)")
	return cmd
}

// processWithParent diffs raw against the image in parentDir and makes the
// parent's data files available in out.
func processWithParent(cmd *cobra.Command, raw, parentDir string, out *store.Local, opts snapshot.Options, sizeSet bool) (*snapshot.Image, error) {
	ctx := cmd.Context()
	pst, err := openSnapshotDir(parentDir)
	if err != nil {
		return nil, err
	}
	parent, err := snapshot.OpenReader(ctx, pst, snapshotHeaderName)
	if err != nil {
		return nil, fmt.Errorf("open parent: %w", err)
	}
	defer parent.Close()
	if !sizeSet {
		opts.BlockSize = parent.BlockSize()
	}
	img, err := snapshot.ProcessMemfileWithParent(ctx, raw, parent, nil, opts)
	if err != nil {
		return nil, err
	}
	for _, b := range img.Header.Builds {
		if b.ID == img.Header.BuildID {
			continue
		}
		if err := out.LinkData(ctx, b.ID.String(), pst.DataPath(b.ID.String())); err != nil {
			_ = img.Remove()
			return nil, err
		}
	}
	return img, nil
}

// openSnapshotDir opens an existing snapshot directory without creating it.
func openSnapshotDir(dir string) (*store.Local, error) {
	if _, err := os.Stat(filepath.Join(dir, "headers", snapshotHeaderName)); err != nil {
		return nil, fmt.Errorf("%s is not a snapshot directory: %w", dir, err)
	}
	return store.OpenLocal(dir)
}

func newSnapshotInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect DIR",
		Short: "Print a snapshot's header as JSON: size, stored bytes, generation, builds, block counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openSnapshotDir(args[0])
			if err != nil {
				return err
			}
			h, err := snapshot.ReadHeader(cmd.Context(), st, snapshotHeaderName)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), infoOf(h))
		},
	}
}

func newSnapshotRestoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore DIR FILE",
		Short: "Materialise a snapshot's full image into FILE (zero blocks become holes)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openSnapshotDir(args[0])
			if err != nil {
				return err
			}
			r, err := snapshot.OpenReader(cmd.Context(), st, snapshotHeaderName)
			if err != nil {
				return err
			}
			defer r.Close()
			if err := r.WriteFile(cmd.Context(), args[1]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "restored %d bytes to %s\n", r.Size(), args[1])
			return err
		},
	}
}
