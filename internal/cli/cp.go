package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// progressThreshold is the size from which cp shows a progress bar.
const progressThreshold = 4 << 20

// remoteRE matches "cl-…:/path".
var remoteRE = regexp.MustCompile(`^(cl-[A-Za-z0-9_-]+):(.*)$`)

func splitRemote(s string) (id, p string, ok bool) {
	m := remoteRE.FindStringSubmatch(s)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

func (cc *capsuleCmd) cpCmd() *cobra.Command {
	var noProgress bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a capsule",
		Long: `Copy one file between this machine and a capsule. A capsule path is written
CAPSULE:PATH. "-" is standard input or output. Files are streamed, never
held in memory; large ones show a progress bar on a terminal.`,
		Example: `  wrenn capsule cp ./data.csv cl-abc:/tmp/data.csv
  wrenn capsule cp cl-abc:/tmp/result.json .
  tar c src | wrenn capsule cp - cl-abc:/tmp/src.tar`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcID, srcPath, srcRemote := splitRemote(args[0])
			dstID, dstPath, dstRemote := splitRemote(args[1])
			bar := !noProgress && isTerminal(cmd.ErrOrStderr())
			switch {
			case srcRemote && dstRemote:
				return errors.New("copy between two capsules is not supported; copy through this machine")
			case !srcRemote && !dstRemote:
				return errors.New("one of SRC and DST must be a capsule path, e.g. cl-abc:/tmp/file")
			case dstRemote:
				return cc.upload(cmd, args[0], dstID, dstPath, bar)
			default:
				return cc.download(cmd, srcID, srcPath, args[1], bar)
			}
		},
	}
	cmd.Flags().BoolVar(&noProgress, "no-progress", false, "never show a progress bar")
	return cmd
}

func newBar(w io.Writer, size int64, desc string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
}

func (cc *capsuleCmd) upload(cmd *cobra.Command, local, id, remote string, showBar bool) error {
	ctx := cmd.Context()
	var (
		r    io.Reader
		size int64 = -1
		name       = filepath.Base(local)
	)
	if local == "-" {
		r, name = cmd.InOrStdin(), ""
	} else {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.IsDir() {
			return fmt.Errorf("%s is a directory; cp copies single files (use tar: tar c DIR | wrenn capsule cp - %s:/tmp/dir.tar)", local, id)
		}
		// Its size now is the upload's Content-Length (a file that grows
		// meanwhile is sent as it was; one that shrinks fails the upload).
		r, size = io.LimitReader(f, st.Size()), st.Size()
	}
	if remote == "" || strings.HasSuffix(remote, "/") || cc.isRemoteDir(ctx, id, remote) {
		if name == "" {
			return errors.New("copying standard input needs a file name in the capsule path")
		}
		remote = path.Join(remote, name)
		if !strings.HasPrefix(remote, "/") {
			remote = "/" + remote
		}
	}
	if showBar && size >= progressThreshold {
		b := newBar(cmd.ErrOrStderr(), size, "upload")
		r = io.TeeReader(r, b)
	}
	e, err := cc.c.Files.WriteSized(ctx, id, remote, r, size) // size -1 (standard input): sent chunked
	if err != nil {
		return cc.wrap(err)
	}
	if size >= 0 && e.Size != size {
		// Some servers answer before the size is known; ask again.
		st, err := cc.c.Files.Stat(ctx, id, remote)
		if err != nil {
			return cc.wrap(err)
		}
		if st.Size != size {
			return fmt.Errorf("upload of %s: %d bytes arrived of %d", local, st.Size, size)
		}
	}
	return nil
}

func (cc *capsuleCmd) isRemoteDir(ctx context.Context, id, p string) bool {
	e, err := cc.c.Files.Stat(ctx, id, p)
	return err == nil && e.Type == "dir"
}

func (cc *capsuleCmd) download(cmd *cobra.Command, id, remote, local string, showBar bool) error {
	ctx := cmd.Context()
	var size int64 = -1
	if e, err := cc.c.Files.Stat(ctx, id, remote); err == nil {
		if e.Type == "dir" {
			return fmt.Errorf("%s:%s is a directory; cp copies single files (tar it first: wrenn capsule exec %s -- tar cf /tmp/d.tar %s)", id, remote, id, remote)
		}
		size = e.Size
	}
	if local == "-" {
		_, err := cc.c.Files.Read(ctx, id, remote, cmd.OutOrStdout())
		return cc.wrap(err)
	}
	if st, err := os.Stat(local); err == nil && st.IsDir() {
		local = filepath.Join(local, path.Base(remote))
	}
	rc, err := cc.c.Files.Open(ctx, id, remote)
	if err != nil {
		return cc.wrap(err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".part-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	var w io.Writer = tmp
	if showBar && size >= progressThreshold {
		w = io.MultiWriter(tmp, newBar(cmd.ErrOrStderr(), size, "download"))
	}
	if _, err := io.Copy(w, rc); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("download of %s:%s: %w", id, remote, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), local)
}
