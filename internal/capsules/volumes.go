package capsules

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Volumes (docs/VOLUMES.md): a team's named, size-limited file systems
// that outlive capsules. The store keeps the volume rows and which
// capsule mounts which volume; a mount holds its volume while its capsule
// is not stopped, at most one mount of a volume is read-write, and all
// mounts holding a volume are on one host (the agent there has its image
// mounted). With no holder the volume's content is in the snapshot store,
// so any host can fetch it.

// Volume bounds and defaults.
const (
	DefaultVolumeSizeMB = 1024
	MinVolumeSizeMB     = 16
	MaxVolumeSizeMB     = 100 * 1024
	// MaxVolumeMounts bounds the mounts of one capsule.
	MaxVolumeMounts = 16
	// MaxVolumeFileBytes bounds one file read or written through the
	// volume file routes (the agent's unary RPCs carry it whole).
	MaxVolumeFileBytes = 64 << 20
)

var volumeNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// forbiddenMountRoots are the paths a volume may not be mounted at or
// under: the capsule's kernel file systems, envd's run directory and
// envd itself (the container driver's EnvdPath).
var forbiddenMountRoots = []string{"/proc", "/dev", "/sys", "/run/wrenn", "/usr/local/bin/envd"}

// ValidVolumeName checks a volume name: 1–63 of a-z, 0-9, ".", "_", "-",
// starting with a letter or digit (no slashes, no spaces, no upper case).
func ValidVolumeName(name string) error {
	if !volumeNameRE.MatchString(name) {
		return errorf(KindInvalid, "volume name %q is invalid: 1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit", clip(name))
	}
	return nil
}

// ValidMountPath checks where a volume is mounted in a capsule.
func ValidMountPath(p string) error {
	switch {
	case p == "" || !strings.HasPrefix(p, "/"):
		return errorf(KindInvalid, "volume mount path %q must be absolute", clip(p))
	case len(p) > 256 || strings.ContainsAny(p, "\x00\n:,"):
		return errorf(KindInvalid, "volume mount path %q is too long or has a forbidden character", clip(p))
	case path.Clean(p) != p:
		return errorf(KindInvalid, "volume mount path %q must be clean (no '..', '.', '//' or trailing '/')", clip(p))
	case p == "/":
		return errorf(KindInvalid, "a volume cannot be mounted over /")
	}
	for _, f := range forbiddenMountRoots {
		if p == f || strings.HasPrefix(p, f+"/") {
			return errorf(KindInvalid, "a volume cannot be mounted at %s (at or under %s)", p, f)
		}
	}
	return nil
}

// VolumeMountRequest is one mount of a capsule create.
type VolumeMountRequest struct {
	Name     string
	Path     string
	ReadOnly bool
}

// VolumeInfo is a volume and the mounts that hold it now.
type VolumeInfo struct {
	Volume store.Volume
	Mounts []store.VolumeMount
}

func volumeSnapshotName(id string) string { return "volume-" + id }

func volumeProto(v store.Volume) *pb.Volume {
	return &pb.Volume{VolumeId: v.ID, SizeMb: v.SizeMB, SnapshotName: v.SnapshotName}
}

func (s *Service) auditVolume(ctx context.Context, sc Scope, v store.Volume, action string, err error, meta map[string]any) {
	if s.cfg.Audit == nil || sc.system {
		return
	}
	s.cfg.Audit.Log(ctx, audit.Entry{
		TeamID: sc.TeamID, Actor: sc.Actor, ResourceType: "volume", ResourceID: v.ID, Action: action, Failed: err != nil, Metadata: meta,
	})
}

// CreateVolume makes an empty volume of sizeMB (nil: the default). Its
// file system is made by the first host that uses it.
func (s *Service) CreateVolume(ctx context.Context, sc Scope, name string, sizeMB *int64) (store.Volume, error) {
	if sc.TeamID == "" {
		return store.Volume{}, errorf(KindInvalid, "a volume is created in a team")
	}
	if err := ValidVolumeName(name); err != nil {
		return store.Volume{}, err
	}
	size, err := intField("size_mb", sizeMB, DefaultVolumeSizeMB, MinVolumeSizeMB, MaxVolumeSizeMB)
	if err != nil {
		return store.Volume{}, err
	}
	id := store.NewID(store.PrefixVolume)
	v, err := s.cfg.Store.CreateVolume(ctx, store.Volume{ID: id, TeamID: sc.TeamID, Name: name, SizeMB: size, SnapshotName: volumeSnapshotName(id)})
	if errors.Is(err, store.ErrAlreadyExists) {
		return v, &Error{Kind: KindConflict, Message: fmt.Sprintf("the team already has a volume named %q", name), Err: err}
	}
	s.auditVolume(ctx, sc, store.Volume{ID: id}, "create", err, map[string]any{"name": name, "size_mb": size})
	return v, err
}

// ListVolumes lists the team's volumes by name.
func (s *Service) ListVolumes(ctx context.Context, sc Scope) ([]store.Volume, error) {
	return s.cfg.Store.ListVolumes(ctx, sc.TeamID)
}

// volumeByName finds the team's volume (another team's: not found).
func (s *Service) volumeByName(ctx context.Context, sc Scope, name string) (store.Volume, error) {
	if err := ValidVolumeName(name); err != nil {
		return store.Volume{}, err
	}
	v, err := s.cfg.Store.GetVolumeByName(ctx, sc.TeamID, name)
	if errors.Is(err, store.ErrNotFound) {
		return v, &Error{Kind: KindNotFound, Message: fmt.Sprintf("volume %q not found", name), Err: err}
	}
	return v, err
}

// GetVolume returns the team's volume and the mounts that hold it.
func (s *Service) GetVolume(ctx context.Context, sc Scope, name string) (VolumeInfo, error) {
	v, err := s.volumeByName(ctx, sc, name)
	if err != nil {
		return VolumeInfo{}, err
	}
	ms, err := s.cfg.Store.ActiveVolumeMounts(ctx, v.ID)
	if err != nil {
		return VolumeInfo{}, err
	}
	return VolumeInfo{Volume: v, Mounts: ms}, nil
}

// DeleteVolume deletes a volume no capsule holds: its row, then its
// content on the host that last used it and in the snapshot store.
func (s *Service) DeleteVolume(ctx context.Context, sc Scope, name string) error {
	v, err := s.volumeByName(ctx, sc, name)
	if err != nil {
		return err
	}
	err = s.cfg.Store.DeleteVolume(ctx, sc.TeamID, v.ID)
	if errors.Is(err, store.ErrConflict) {
		err = &Error{Kind: KindConflict, Message: fmt.Sprintf("volume %q is mounted by a capsule; delete the capsule first", name), Err: err}
	}
	s.auditVolume(ctx, sc, v, "delete", err, map[string]any{"name": name})
	if err != nil {
		return err
	}
	// The row is gone (the name is free again); the content goes now. A
	// failure leaves unreferenced data that the snapshot GC cannot tell
	// from live data only by name: log it.
	bg := context.WithoutCancel(ctx)
	h, herr := s.volumeHost(bg, sc, nil)
	if herr == nil {
		_, herr = s.cfg.Agents.Client(h).DeleteVolume(bg, connect.NewRequest(&pb.DeleteVolumeRequest{Volume: volumeProto(v)}))
	}
	if herr != nil {
		s.log.Warn("delete volume content", "volume_id", v.ID, "err", herr)
	}
	return nil
}

// volumeHost is where a volume's file operations run: the host of the
// mounts that hold it, else any host that runs containers.
func (s *Service) volumeHost(ctx context.Context, sc Scope, mounts []store.VolumeMount) (store.Host, error) {
	for _, m := range mounts {
		if m.HostID != "" {
			return s.cfg.Store.GetHost(ctx, m.HostID)
		}
	}
	probe := "volume-op-" + store.NewID("x")
	h, err := s.pick(ctx, sc.TeamID, scheduler.Request{CapsuleID: probe, Isolation: runtime.IsolationContainer})
	if err != nil {
		return h, err
	}
	s.cfg.Scheduler.Release(h.ID, probe)
	return h, nil
}

// volumeFileError turns an agent's answer to a volume file call into a
// message about the volume (never a host path).
func volumeFileError(v store.Volume, p string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return &Error{Kind: KindNotFound, Message: fmt.Sprintf("%s: no such file or directory in volume %q", clip(p), v.Name), Err: err}
	case connect.CodeResourceExhausted:
		return &Error{Kind: KindVolumeFull, Message: fmt.Sprintf("volume %q is full (size_mb %d) or the file is larger than %d MiB", v.Name, v.SizeMB, MaxVolumeFileBytes>>20), Err: err}
	case connect.CodeInvalidArgument:
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("%s: invalid path in volume %q", clip(p), v.Name), Err: err}
	}
	return AgentError(err)
}

// volumeOp resolves a volume and the host for a file operation on it.
func (s *Service) volumeOp(ctx context.Context, sc Scope, name string) (store.Volume, store.Host, error) {
	info, err := s.GetVolume(ctx, sc, name)
	if err != nil {
		return store.Volume{}, store.Host{}, err
	}
	h, err := s.volumeHost(ctx, sc, info.Mounts)
	return info.Volume, h, err
}

// VolumeReadFile reads one file of a volume.
func (s *Service) VolumeReadFile(ctx context.Context, sc Scope, name, p string) ([]byte, error) {
	v, h, err := s.volumeOp(ctx, sc, name)
	if err != nil {
		return nil, err
	}
	res, err := s.cfg.Agents.Client(h).VolumeReadFile(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: volumeProto(v), Path: p}))
	if err != nil {
		return nil, volumeFileError(v, p, err)
	}
	return res.Msg.GetData(), nil
}

// VolumeWriteFile writes (creates or replaces) one file of a volume; a
// write that does not fit leaves the old file.
func (s *Service) VolumeWriteFile(ctx context.Context, sc Scope, name, p string, data []byte) (*pb.FileEntry, error) {
	v, h, err := s.volumeOp(ctx, sc, name)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > v.SizeMB<<20 {
		return nil, errorf(KindVolumeFull, "%d bytes do not fit in volume %q (size_mb %d)", len(data), v.Name, v.SizeMB)
	}
	res, err := s.cfg.Agents.Client(h).VolumeWriteFile(ctx, connect.NewRequest(&pb.VolumeWriteFileRequest{Volume: volumeProto(v), Path: p, Data: data}))
	if err != nil {
		return nil, volumeFileError(v, p, err)
	}
	_ = s.cfg.Store.BumpVolumeVersion(context.WithoutCancel(ctx), v.ID)
	return res.Msg.GetEntry(), nil
}

// VolumeListDir lists a directory of a volume.
func (s *Service) VolumeListDir(ctx context.Context, sc Scope, name, p string) ([]*pb.FileEntry, error) {
	v, h, err := s.volumeOp(ctx, sc, name)
	if err != nil {
		return nil, err
	}
	res, err := s.cfg.Agents.Client(h).VolumeListDir(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: volumeProto(v), Path: p}))
	if err != nil {
		return nil, volumeFileError(v, p, err)
	}
	return res.Msg.GetEntries(), nil
}

// VolumeRemove removes a file or directory (recursively) of a volume.
func (s *Service) VolumeRemove(ctx context.Context, sc Scope, name, p string) error {
	v, h, err := s.volumeOp(ctx, sc, name)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Agents.Client(h).VolumeRemove(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: volumeProto(v), Path: p})); err != nil {
		return volumeFileError(v, p, err)
	}
	_ = s.cfg.Store.BumpVolumeVersion(context.WithoutCancel(ctx), v.ID)
	return nil
}

// resolvedMounts are a create's checked mounts.
type resolvedMounts struct {
	mounts []store.VolumeMount
	proto  []*pb.VolumeMount
	// hostID, when set, is the host the capsule must go to (the volume's
	// other holders are there).
	hostID string
}

// resolveVolumeMounts checks a create's mounts — paths, names, the team's
// volumes, the isolation, one read-write mount per volume — and finds the
// host they pin the capsule to. Nothing is recorded.
func (s *Service) resolveVolumeMounts(ctx context.Context, teamID, isolation string, reqs []VolumeMountRequest) (resolvedMounts, error) {
	var out resolvedMounts
	if len(reqs) == 0 {
		return out, nil
	}
	if len(reqs) > MaxVolumeMounts {
		return out, errorf(KindInvalid, "at most %d volume mounts per capsule", MaxVolumeMounts)
	}
	seenPath := map[string]bool{}
	seenVol := map[string]bool{}
	for _, r := range reqs {
		if err := ValidMountPath(r.Path); err != nil {
			return out, err
		}
		if err := ValidVolumeName(r.Name); err != nil {
			return out, err
		}
		for p := range seenPath {
			if p == r.Path || strings.HasPrefix(r.Path, p+"/") || strings.HasPrefix(p, r.Path+"/") {
				return out, errorf(KindInvalid, "volume mount paths %s and %s overlap", p, r.Path)
			}
		}
		seenPath[r.Path] = true
		if seenVol[r.Name] {
			return out, errorf(KindInvalid, "volume %q is mounted twice", r.Name)
		}
		seenVol[r.Name] = true
	}
	if isolation != runtime.IsolationContainer {
		return out, errorf(KindVolumesUnsupported, "volumes are not supported with the %s isolation (only container capsules mount volumes)", isolation)
	}
	for _, r := range reqs {
		v, err := s.volumeByName(ctx, Scope{TeamID: teamID}, r.Name)
		if err != nil {
			return out, err
		}
		active, err := s.cfg.Store.ActiveVolumeMounts(ctx, v.ID)
		if err != nil {
			return out, err
		}
		for _, a := range active {
			if !a.ReadOnly || !r.ReadOnly {
				return out, errorf(KindConflict, "volume %q is mounted by capsule %s; only read-only mounts may share a volume and only while no read-write mount holds it", r.Name, a.CapsuleID)
			}
			if out.hostID != "" && a.HostID != out.hostID {
				return out, errorf(KindConflict, "the volumes of this capsule are held on different hosts")
			}
			out.hostID = a.HostID
		}
		out.mounts = append(out.mounts, store.VolumeMount{VolumeID: v.ID, Path: r.Path, ReadOnly: r.ReadOnly})
		out.proto = append(out.proto, &pb.VolumeMount{Volume: volumeProto(v), Path: r.Path, ReadOnly: r.ReadOnly})
	}
	return out, nil
}

// addVolumeMounts records the checked mounts of the new capsule c (its row
// just made, on its host). Two creates that raced past the checks meet
// here under the volume's lock: the loser's row is deleted again, so it
// leaves nothing behind.
func (s *Service) addVolumeMounts(ctx context.Context, c store.Capsule, vols resolvedMounts) error {
	if len(vols.mounts) == 0 {
		return nil
	}
	err := s.cfg.Store.AddVolumeMounts(ctx, c.TeamID, c.ID, vols.mounts)
	if err == nil {
		return nil
	}
	if derr := s.cfg.Store.DeleteCapsule(context.WithoutCancel(ctx), c.TeamID, c.ID); derr != nil {
		s.log.Warn("delete capsule row after a refused volume mount", "capsule_id", c.ID, "err", derr)
	}
	switch {
	case errors.Is(err, store.ErrConflict):
		return &Error{Kind: KindConflict, Message: "a volume of this capsule was just mounted by another capsule (read-write, or on another host)", Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Kind: KindNotFound, Message: "a volume of this capsule was just deleted", Err: err}
	}
	return err
}
