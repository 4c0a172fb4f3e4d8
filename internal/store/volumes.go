package store

import (
	"context"
	"time"
)

// PrefixVolume is the id prefix of volumes (vol-…).
const PrefixVolume = "vol"

// Volume is a team's persistent volume (docs/VOLUMES.md). SizeMB is its
// quota. Its content lives in the snapshot store under SnapshotName when no
// capsule holds it, else on the host of the capsules that mount it.
// Version counts the generations written back that the control plane saw.
type Volume struct {
	ID           string
	TeamID       string
	Name         string
	SizeMB       int64
	CreatedAt    time.Time
	UpdatedAt    time.Time
	Version      int64
	SnapshotName string
}

// VolumeMount is one capsule's mount of a volume. HostID and
// CapsuleStatus are filled by ActiveVolumeMounts; VolumeName, SizeMB and
// SnapshotName by CapsuleVolumeMounts.
type VolumeMount struct {
	CapsuleID     string
	VolumeID      string
	Path          string
	ReadOnly      bool
	CreatedAt     time.Time
	HostID        string
	CapsuleStatus CapsuleStatus
	VolumeName    string
	SizeMB        int64
	SnapshotName  string
}

// VolumeStore is the store's part for volumes (migration 17). A mount
// holds its volume while its capsule is not stopped ("active").
type VolumeStore interface {
	// CreateVolume inserts v (ID, when empty, and the times are set);
	// ErrAlreadyExists when the team has a volume of that name.
	CreateVolume(ctx context.Context, v Volume) (Volume, error)
	GetVolumeByName(ctx context.Context, teamID, name string) (Volume, error)
	ListVolumes(ctx context.Context, teamID string) ([]Volume, error)
	// DeleteVolume removes the team's volume id and its past mounts;
	// ErrConflict (nothing changed) while an active mount holds it.
	DeleteVolume(ctx context.Context, teamID, id string) error
	// ActiveVolumeMounts lists the mounts that hold volume id.
	ActiveVolumeMounts(ctx context.Context, volumeID string) ([]VolumeMount, error)
	// AddVolumeMounts records the mounts of the team's capsule (which must
	// exist, placed on its host) in one transaction, each volume's row
	// locked: ErrNotFound when a volume is not the team's; ErrConflict when
	// a read-write mount would join an active mount of the volume or a
	// mount would join an active read-write one, or when the volume's
	// active mounts are on another host. Nothing is recorded on error.
	AddVolumeMounts(ctx context.Context, teamID, capsuleID string, mounts []VolumeMount) error
	// RemoveVolumeMounts forgets a capsule's mounts (a create that failed).
	RemoveVolumeMounts(ctx context.Context, capsuleID string) error
	// CapsuleVolumeMounts lists a capsule's mounts with their volumes.
	CapsuleVolumeMounts(ctx context.Context, capsuleID string) ([]VolumeMount, error)
	// BumpVolumeVersion counts one more generation written back.
	BumpVolumeVersion(ctx context.Context, id string) error
}
