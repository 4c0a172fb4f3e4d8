package hostagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Volumes on a host (docs/VOLUMES.md). A volume is a sparse ext4 image of
// its quota (mkfs.ext4, behind a loop device: the quota is the file
// system's size, so a capsule writing past it gets ENOSPC). While some
// holder uses it — a capsule that mounts it, or one file operation of the
// API — it is mounted once under volumes/<id>/mnt and the driver binds a
// clone of that mount into each capsule. When its last holder lets go it
// is unmounted (the loop device goes with the mount), written back to the
// snapshot store if a read-write holder had it (snapshot.Manager.Pause:
// zero blocks are not stored; the header write is the commit point, so a
// crash mid-upload leaves the previous version in place, never half of a
// new one) and its local copy deleted. The next holder, on any host that
// shares the store, fetches it from there (sparse). A volume whose upload
// failed keeps its local copy (marked dirty) and uploads it at its next
// release here.
//
// Each volume's state (holders, dirty) is a JSON file beside its image,
// so a restarted agent finds which capsules still hold it and releases
// the volumes of capsules that are gone.
type volumes struct {
	dir  string
	move runtime.VolumeMounter // nil: the driver mounts no volumes
	log  *slog.Logger

	mu   sync.Mutex
	vols map[string]*volume
}

type volume struct {
	mu sync.Mutex // serializes attach, release and file operations
	st volumeState
}

type volumeState struct {
	VolumeID     string
	SnapshotName string
	SizeMB       int64
	// Holders maps a holder (capsule id or "files-…") to whether it
	// holds the volume read-write.
	Holders map[string]bool
	// Dirty: written since it was fetched (must be written back).
	Dirty bool
}

var (
	volumeIDRE     = regexp.MustCompile(`^vol-[a-z0-9]{1,64}$`)
	snapshotNameRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`)
)

// errVolumeHeld refuses deleting a volume that a holder uses.
var errVolumeHeld = errors.New("the volume is in use on this host")

func (v *volumes) path(id string) string      { return filepath.Join(v.dir, id) }
func (v *volumes) image(id string) string     { return filepath.Join(v.dir, id, "disk.img") }
func (v *volumes) mnt(id string) string       { return filepath.Join(v.dir, id, "mnt") }
func (v *volumes) stateFile(id string) string { return filepath.Join(v.dir, id, "state.json") }

// get returns the volume's entry, locked.
func (v *volumes) get(id string) *volume {
	v.mu.Lock()
	vol := v.vols[id]
	if vol == nil {
		vol = &volume{}
		v.vols[id] = vol
	}
	v.mu.Unlock()
	vol.mu.Lock()
	return vol
}

func (v *volumes) save(st volumeState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := v.stateFile(st.VolumeID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("volume %s: %w", st.VolumeID, err)
	}
	return os.Rename(tmp, v.stateFile(st.VolumeID))
}

func (v *volumes) load(id string) (volumeState, bool) {
	b, err := os.ReadFile(v.stateFile(id))
	if err != nil {
		return volumeState{}, false
	}
	var st volumeState
	if json.Unmarshal(b, &st) != nil || st.VolumeID != id {
		return volumeState{}, false
	}
	return st, true
}

func specOf(p *pb.Volume) (volumeState, error) {
	if p == nil || !volumeIDRE.MatchString(p.GetVolumeId()) {
		return volumeState{}, fmt.Errorf("%w: invalid volume id", runtime.ErrInvalidSpec)
	}
	if p.GetSizeMb() < 8 || p.GetSizeMb() > 1<<20 {
		return volumeState{}, fmt.Errorf("%w: volume size %d MB", runtime.ErrInvalidSpec, p.GetSizeMb())
	}
	if !snapshotNameRE.MatchString(p.GetSnapshotName()) {
		return volumeState{}, fmt.Errorf("%w: invalid volume snapshot name", runtime.ErrInvalidSpec)
	}
	return volumeState{VolumeID: p.GetVolumeId(), SnapshotName: p.GetSnapshotName(), SizeMB: p.GetSizeMb()}, nil
}

// mounted reports whether the volume's file system is mounted here.
func (v *volumes) mounted(id string) bool {
	ms, err := rootfs.MountsUnder(v.mnt(id))
	return err == nil && len(ms) > 0
}

// attach makes holder a holder of the volume p (read-write when rw) and
// returns the root of its mounted file system.
func (v *volumes) attach(ctx context.Context, holder string, p *pb.Volume, rw bool) (string, error) {
	want, err := specOf(p)
	if err != nil {
		return "", err
	}
	vol := v.get(want.VolumeID)
	defer vol.mu.Unlock()
	id := want.VolumeID
	st, ok := v.load(id)
	if !ok {
		st = want
	}
	if st.Holders == nil {
		st.Holders = map[string]bool{}
	}
	if !v.mounted(id) {
		if err := v.materialize(ctx, st); err != nil {
			return "", err
		}
		if err := rootfs.MountImage(v.image(id), v.mnt(id)); err != nil {
			return "", fmt.Errorf("volume %s: %w", id, err)
		}
	}
	st.Holders[holder] = st.Holders[holder] || rw
	st.Dirty = st.Dirty || rw
	if err := v.save(st); err != nil {
		return "", err
	}
	vol.st = st
	return v.mnt(id), nil
}

// materialize makes the volume's image exist locally: kept from before (an
// upload that failed), fetched from the snapshot store, or a new one.
func (v *volumes) materialize(ctx context.Context, st volumeState) error {
	id := st.VolumeID
	if err := os.MkdirAll(v.path(id), 0o700); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if _, err := os.Stat(v.image(id)); err == nil {
		if _, ok := v.load(id); ok {
			return nil
		}
		// An image without state is a fetch a crash cut short.
		_ = os.Remove(v.image(id))
	}
	if v.move == nil {
		return fmt.Errorf("%w: this host's runtime mounts no volumes", runtime.ErrNotSupported)
	}
	tmp := v.image(id) + ".part"
	_ = os.Remove(tmp)
	err := v.move.FetchVolume(ctx, st.SnapshotName, tmp)
	switch {
	case errors.Is(err, runtime.ErrNotFound):
		_ = os.Remove(tmp)
		if err := rootfs.MakeImage(ctx, tmp, int(st.SizeMB)); err != nil {
			return fmt.Errorf("volume %s: %w", id, err)
		}
		if err := prepareVolumeRoot(tmp); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("volume %s: %w", id, err)
		}
	case err != nil:
		_ = os.Remove(tmp)
		return fmt.Errorf("volume %s: fetch: %w", id, err)
	}
	st.Holders, st.Dirty = map[string]bool{}, false
	if err := v.save(st); err != nil {
		return err
	}
	return os.Rename(tmp, v.image(id))
}

// prepareVolumeRoot makes a new volume's root writable by every user of
// the capsule (mode 1777, like /tmp) and drops lost+found.
func prepareVolumeRoot(img string) error {
	dir, err := os.MkdirTemp(filepath.Dir(img), ".prep-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := rootfs.MountImage(img, dir); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "lost+found"))
	cerr := os.Chmod(dir, 0o777|os.ModeSticky)
	return errors.Join(cerr, rootfs.UnmountImage(img, dir))
}

// release drops holder from the volume; the last holder's release writes
// the volume back (if dirty) and deletes the local copy.
func (v *volumes) release(ctx context.Context, holder, id string) error {
	vol := v.get(id)
	defer vol.mu.Unlock()
	st, ok := v.load(id)
	if !ok {
		return nil
	}
	if _, held := st.Holders[holder]; !held {
		return nil
	}
	delete(st.Holders, holder)
	if err := v.save(st); err != nil {
		return err
	}
	if len(st.Holders) > 0 {
		return nil
	}
	return v.writeBack(ctx, st)
}

// writeBack unmounts an unheld volume, uploads it if dirty and removes the
// local copy; on a failed upload the copy stays (dirty) for the next try.
func (v *volumes) writeBack(ctx context.Context, st volumeState) error {
	id := st.VolumeID
	if err := rootfs.UnmountImage(v.image(id), v.mnt(id)); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if st.Dirty {
		if err := syncFile(v.image(id)); err != nil {
			return fmt.Errorf("volume %s: %w", id, err)
		}
		if v.move == nil {
			return fmt.Errorf("volume %s: no snapshot store; kept on this host", id)
		}
		t0 := time.Now()
		if err := v.move.PublishVolume(ctx, st.SnapshotName, v.image(id)); err != nil {
			return fmt.Errorf("volume %s: write back (kept on this host, retried at its next release): %w", id, err)
		}
		v.log.Info("volume written back", "volume_id", id, "snapshot", st.SnapshotName, "took", time.Since(t0))
	}
	return os.RemoveAll(v.path(id))
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

// releaseCapsule releases every volume capsule id holds.
func (v *volumes) releaseCapsule(ctx context.Context, id string) {
	for _, vid := range v.heldBy(id) {
		if err := v.release(ctx, id, vid); err != nil {
			v.log.Error("release volume", "capsule_id", id, "volume_id", vid, "err", err)
		}
	}
}

// heldBy lists the volumes holder holds (from their state files).
func (v *volumes) heldBy(holder string) []string {
	var out []string
	for _, id := range v.list() {
		if st, ok := v.load(id); ok {
			if _, held := st.Holders[holder]; held {
				out = append(out, id)
			}
		}
	}
	return out
}

func (v *volumes) list() []string {
	es, err := os.ReadDir(v.dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range es {
		if e.IsDir() && volumeIDRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// recover, after an agent restart, drops holders that are neither a live
// capsule nor anything else (file operations do not survive a restart)
// and writes back volumes left without holders.
func (v *volumes) recover(ctx context.Context, live func(id string) bool) {
	for _, id := range v.list() {
		st, ok := v.load(id)
		if !ok {
			// No state: a fetch or create a crash cut short.
			if !v.mounted(id) {
				_ = os.RemoveAll(v.path(id))
			}
			continue
		}
		for h := range st.Holders {
			if !live(h) {
				if err := v.release(ctx, h, id); err != nil {
					v.log.Error("release volume of a gone holder", "volume_id", id, "holder", h, "err", err)
				}
			}
		}
		if st, ok := v.load(id); ok && len(st.Holders) == 0 && v.mounted(id) {
			vol := v.get(id)
			if err := v.writeBack(ctx, st); err != nil {
				v.log.Error("write back volume", "volume_id", id, "err", err)
			}
			vol.mu.Unlock()
		}
	}
}

// deleteVolume removes an unheld volume's local copy and its image in the
// snapshot store.
func (v *volumes) deleteVolume(ctx context.Context, p *pb.Volume) error {
	want, err := specOf(p)
	if err != nil {
		return err
	}
	id := want.VolumeID
	vol := v.get(id)
	defer vol.mu.Unlock()
	if st, ok := v.load(id); ok && len(st.Holders) > 0 {
		return fmt.Errorf("volume %s: %w", id, errVolumeHeld)
	}
	if v.mounted(id) {
		if err := rootfs.UnmountImage(v.image(id), v.mnt(id)); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(v.path(id)); err != nil {
		return err
	}
	if v.move != nil {
		if err := v.move.DeleteVolume(ctx, want.SnapshotName); err != nil {
			return err
		}
	}
	return nil
}

// withFiles runs f on the volume's mounted root (an os.Root: no path
// escapes it, symlinks included), holding it for the call.
func (v *volumes) withFiles(ctx context.Context, p *pb.Volume, write bool, f func(root *os.Root) error) error {
	holder := "files-" + newToken()[:12]
	dir, err := v.attach(ctx, holder, p, write)
	if err != nil {
		return err
	}
	defer func() {
		// The write back must not be cut short by the caller leaving.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		if err := v.release(rctx, holder, p.GetVolumeId()); err != nil {
			v.log.Error("release volume after file operation", "volume_id", p.GetVolumeId(), "err", err)
		}
	}()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return f(root)
}

// volumeRel turns an API path ("/a/b", "a/b", "/" or "") into a path
// relative to the volume's root; a ".." element is refused (and os.Root
// keeps every access inside the volume, symlinks included).
func volumeRel(p string) (string, error) {
	if strings.ContainsRune(p, 0) || len(p) > 4096 {
		return "", fmt.Errorf("%w: invalid path", runtime.ErrInvalidSpec)
	}
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return "", fmt.Errorf("%w: path %q has a \"..\" element", runtime.ErrInvalidSpec, p)
		}
	}
	c := filepath.Clean("/" + p)
	if c == "/" {
		return ".", nil
	}
	return strings.TrimPrefix(c, "/"), nil
}

func volumeEntry(rel string, fi fs.FileInfo) *pb.FileEntry {
	typ := ""
	switch {
	case fi.Mode().IsRegular():
		typ = "file"
	case fi.IsDir():
		typ = "dir"
	}
	p := "/" + rel
	if rel == "." {
		p = "/"
	}
	return &pb.FileEntry{
		Name: fi.Name(), Path: p, Type: typ, Size: fi.Size(), Mode: uint32(fi.Mode().Perm()),
		Permissions: fi.Mode().String(), ModifiedAt: fi.ModTime().Unix(),
	}
}

// maxVolumeFile bounds one file read or written through the agent's unary
// volume file RPCs.
const maxVolumeFile = 64 << 20

func (v *volumes) readFile(ctx context.Context, p *pb.Volume, path string) ([]byte, error) {
	rel, err := volumeRel(path)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = v.withFiles(ctx, p, false, func(root *os.Root) error {
		fi, err := root.Stat(rel)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return fmt.Errorf("%w: %s is a directory", runtime.ErrInvalidSpec, path)
		}
		if fi.Size() > maxVolumeFile {
			return fmt.Errorf("%w: %s is larger than %d MiB", errTooLarge, path, maxVolumeFile>>20)
		}
		out, err = root.ReadFile(rel)
		return err
	})
	return out, err
}

var errTooLarge = errors.New("too large")

func (v *volumes) writeFile(ctx context.Context, p *pb.Volume, path string, data []byte) (*pb.FileEntry, error) {
	rel, err := volumeRel(path)
	if err != nil {
		return nil, err
	}
	if rel == "." {
		return nil, fmt.Errorf("%w: a file path is required", runtime.ErrInvalidSpec)
	}
	var out *pb.FileEntry
	err = v.withFiles(ctx, p, true, func(root *os.Root) error {
		if d := filepath.Dir(rel); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		// Written beside, then renamed: a write that runs out of space
		// leaves the old file as it was.
		tmp := filepath.Join(filepath.Dir(rel), ".wrenn-upload-"+newToken()[:12])
		f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		_, werr := f.Write(data)
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			_ = root.Remove(tmp)
			return err
		}
		if err := root.Rename(tmp, rel); err != nil {
			_ = root.Remove(tmp)
			return err
		}
		fi, err := root.Stat(rel)
		if err != nil {
			return err
		}
		out = volumeEntry(rel, fi)
		return nil
	})
	return out, err
}

func (v *volumes) listDir(ctx context.Context, p *pb.Volume, path string) ([]*pb.FileEntry, error) {
	rel, err := volumeRel(path)
	if err != nil {
		return nil, err
	}
	var out []*pb.FileEntry
	err = v.withFiles(ctx, p, false, func(root *os.Root) error {
		d, err := root.Open(rel)
		if err != nil {
			return err
		}
		defer d.Close()
		es, err := d.ReadDir(-1)
		if err != nil {
			return err
		}
		sort.Slice(es, func(i, j int) bool { return es[i].Name() < es[j].Name() })
		for _, e := range es {
			fi, err := e.Info()
			if err != nil {
				continue
			}
			out = append(out, volumeEntry(filepath.Join(rel, e.Name()), fi))
		}
		return nil
	})
	return out, err
}

func (v *volumes) remove(ctx context.Context, p *pb.Volume, path string) error {
	rel, err := volumeRel(path)
	if err != nil {
		return err
	}
	if rel == "." {
		return fmt.Errorf("%w: the volume's root cannot be removed", runtime.ErrInvalidSpec)
	}
	return v.withFiles(ctx, p, true, func(root *os.Root) error {
		if _, err := root.Lstat(rel); err != nil {
			return err
		}
		return root.RemoveAll(rel)
	})
}

// attachVolumes makes capsule id a holder of each mount's volume (all or
// none) and returns the driver's binds.
func (a *Agent) attachVolumes(ctx context.Context, id string, mounts []*pb.VolumeMount) ([]runtime.VolumeMount, error) {
	out := make([]runtime.VolumeMount, 0, len(mounts))
	for _, m := range mounts {
		src, err := a.vols.attach(ctx, id, m.GetVolume(), !m.GetReadOnly())
		if err != nil {
			a.vols.releaseCapsule(context.WithoutCancel(ctx), id)
			return nil, err
		}
		out = append(out, runtime.VolumeMount{VolumeID: m.GetVolume().GetVolumeId(), Source: src, Path: m.GetPath(), ReadOnly: m.GetReadOnly()})
	}
	return out, nil
}

// VolumeReadFile implements the agent service.
func (s service) VolumeReadFile(ctx context.Context, req *connect.Request[pb.VolumeFileRequest]) (*connect.Response[pb.VolumeReadFileResponse], error) {
	b, err := s.a.vols.readFile(ctx, req.Msg.GetVolume(), req.Msg.GetPath())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.VolumeReadFileResponse{Data: b}), nil
}

// VolumeWriteFile implements the agent service.
func (s service) VolumeWriteFile(ctx context.Context, req *connect.Request[pb.VolumeWriteFileRequest]) (*connect.Response[pb.VolumeWriteFileResponse], error) {
	if len(req.Msg.GetData()) > maxVolumeFile {
		return nil, toConnect(fmt.Errorf("%w: a file is at most %d MiB", errTooLarge, maxVolumeFile>>20))
	}
	e, err := s.a.vols.writeFile(ctx, req.Msg.GetVolume(), req.Msg.GetPath(), req.Msg.GetData())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.VolumeWriteFileResponse{Entry: e}), nil
}

// VolumeListDir implements the agent service.
func (s service) VolumeListDir(ctx context.Context, req *connect.Request[pb.VolumeFileRequest]) (*connect.Response[pb.VolumeListDirResponse], error) {
	es, err := s.a.vols.listDir(ctx, req.Msg.GetVolume(), req.Msg.GetPath())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.VolumeListDirResponse{Entries: es}), nil
}

// VolumeRemove implements the agent service.
func (s service) VolumeRemove(ctx context.Context, req *connect.Request[pb.VolumeFileRequest]) (*connect.Response[pb.VolumeRemoveResponse], error) {
	if err := s.a.vols.remove(ctx, req.Msg.GetVolume(), req.Msg.GetPath()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.VolumeRemoveResponse{}), nil
}

// DeleteVolume implements the agent service.
func (s service) DeleteVolume(ctx context.Context, req *connect.Request[pb.DeleteVolumeRequest]) (*connect.Response[pb.DeleteVolumeResponse], error) {
	if err := s.a.vols.deleteVolume(ctx, req.Msg.GetVolume()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DeleteVolumeResponse{}), nil
}
