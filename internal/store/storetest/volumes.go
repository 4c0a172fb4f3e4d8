package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// testVolumes: names are unique per team and team-scoped; at most one
// read-write mount holds a volume, read-only ones share it on one host; a
// stopped capsule releases its mounts; delete is refused while mounted.
func testVolumes(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a, b := newTeam(t, s, "vol-a"), newTeam(t, s, "vol-b")
	v := must(s.CreateVolume(ctx, store.Volume{TeamID: a.ID, Name: "data", SizeMB: 64, SnapshotName: "volume-x"}))(t)
	if len(v.ID) < 5 || v.ID[:4] != "vol-" {
		t.Fatalf("id %q", v.ID)
	}
	_, err := s.CreateVolume(ctx, store.Volume{TeamID: a.ID, Name: "data", SizeMB: 64, SnapshotName: "volume-y"})
	wantErr(t, err, store.ErrAlreadyExists)
	vb := must(s.CreateVolume(ctx, store.Volume{TeamID: b.ID, Name: "data", SizeMB: 8, SnapshotName: "volume-z"}))(t)
	got := must(s.GetVolumeByName(ctx, a.ID, "data"))(t)
	eq(t, "id", got.ID, v.ID)
	eq(t, "size", got.SizeMB, int64(64))
	eq(t, "snapshot", got.SnapshotName, "volume-x")
	_, err = s.GetVolumeByName(ctx, a.ID, "nope")
	wantErr(t, err, store.ErrNotFound)
	eq(t, "list a", len(must(s.ListVolumes(ctx, a.ID))(t)), 1)

	c1 := newCapsule(t, s, a.ID, store.Now())
	c2 := newCapsule(t, s, a.ID, store.Now())
	c3 := newCapsule(t, s, a.ID, store.Now())
	noErr(t, s.AddVolumeMounts(ctx, a.ID, c1.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/data"}}))
	// A second read-write mount, or a read-only one beside a read-write
	// one, is refused and records nothing.
	wantErr(t, s.AddVolumeMounts(ctx, a.ID, c2.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/data"}}), store.ErrConflict)
	wantErr(t, s.AddVolumeMounts(ctx, a.ID, c2.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/ro", ReadOnly: true}}), store.ErrConflict)
	eq(t, "c2 mounts", len(must(s.CapsuleVolumeMounts(ctx, c2.ID))(t)), 0)
	// Another team's volume is not found.
	wantErr(t, s.AddVolumeMounts(ctx, a.ID, c2.ID, []store.VolumeMount{{VolumeID: vb.ID, Path: "/b", ReadOnly: true}}), store.ErrNotFound)
	// Delete refused while mounted.
	wantErr(t, s.DeleteVolume(ctx, a.ID, v.ID), store.ErrConflict)
	mine := must(s.CapsuleVolumeMounts(ctx, c1.ID))(t)
	eq(t, "c1 mounts", len(mine), 1)
	eq(t, "mount name", mine[0].VolumeName, "data")
	eq(t, "mount size", mine[0].SizeMB, int64(64))
	eq(t, "mount snapshot", mine[0].SnapshotName, "volume-x")
	eq(t, "mount rw", mine[0].ReadOnly, false)

	// Stopping c1 releases the volume; read-only mounts then share it.
	if ok := must(s.UpdateCapsuleStatus(ctx, a.ID, c1.ID, store.CapsuleRunning, store.CapsuleStopped))(t); !ok {
		t.Fatal("stop c1")
	}
	eq(t, "active after stop", len(must(s.ActiveVolumeMounts(ctx, v.ID))(t)), 0)
	noErr(t, s.AddVolumeMounts(ctx, a.ID, c2.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/ro", ReadOnly: true}}))
	noErr(t, s.AddVolumeMounts(ctx, a.ID, c3.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/ro", ReadOnly: true}}))
	eq(t, "active ro", len(must(s.ActiveVolumeMounts(ctx, v.ID))(t)), 2)
	noErr(t, s.RemoveVolumeMounts(ctx, c2.ID))
	noErr(t, s.RemoveVolumeMounts(ctx, c3.ID))
	noErr(t, s.BumpVolumeVersion(ctx, v.ID))
	eq(t, "version", must(s.GetVolumeByName(ctx, a.ID, "data"))(t).Version, int64(1))
	wantErr(t, s.DeleteVolume(ctx, b.ID, v.ID), store.ErrNotFound)
	noErr(t, s.DeleteVolume(ctx, a.ID, v.ID))
	eq(t, "list a after delete", len(must(s.ListVolumes(ctx, a.ID))(t)), 0)
	eq(t, "stopped c1 mount gone", len(must(s.CapsuleVolumeMounts(ctx, c1.ID))(t)), 0)
}

// testVolumeMountsConcurrent: of many concurrent read-write mounts of one
// volume exactly one is recorded.
func testVolumeMountsConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "vol-race")
	v := must(s.CreateVolume(ctx, store.Volume{TeamID: team.ID, Name: "race", SizeMB: 16, SnapshotName: "volume-race"}))(t)
	const n = 8
	caps := make([]store.Capsule, n)
	for i := range caps {
		caps[i] = newCapsule(t, s, team.ID, store.Now().Add(time.Duration(i)*time.Millisecond))
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ok, conf int
		other    []error
	)
	for i := range n {
		wg.Go(func() {
			err := s.AddVolumeMounts(ctx, team.ID, caps[i].ID, []store.VolumeMount{{VolumeID: v.ID, Path: fmt.Sprintf("/d%d", i)}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, store.ErrConflict):
				conf++
			default:
				other = append(other, err)
			}
		})
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("unexpected errors: %v", other)
	}
	eq(t, "mounted", ok, 1)
	eq(t, "refused", conf, n-1)
	eq(t, "active", len(must(s.ActiveVolumeMounts(ctx, v.ID))(t)), 1)
}
