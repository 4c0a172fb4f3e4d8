package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// Volumes (docs/VOLUMES.md). The host agent mounts each volume's ext4
// image once on the host (its on-disk ids are capsule ids) and passes its
// root as runtime.VolumeMount.Source. For each capsule the driver makes a
// clone of that mount under volmounts/<key>/<n> — idmapped to the
// capsule's user namespace, read-only at the mount level for a read-only
// mount, nosuid and nodev — and the OCI config binds the clone at the
// mount's path. The clones live outside the capsule directory, so no
// recursive delete of a capsule's files can ever descend into a volume;
// release unmounts them before anything else of the capsule goes.

var _ runtime.VolumeMounter = (*Driver)(nil)

// PublishVolume implements runtime.VolumeMounter: a full image (zero
// blocks skipped) published under name; the header write is the commit.
func (d *Driver) PublishVolume(ctx context.Context, name, path string) error {
	_, err := d.snaps.Pause(ctx, name, path, snapshot.PauseOptions{})
	return err
}

// FetchVolume implements runtime.VolumeMounter.
func (d *Driver) FetchVolume(ctx context.Context, name, path string) error {
	r, err := d.snaps.Open(ctx, name)
	if errors.Is(err, snapstore.ErrNotFound) {
		return fmt.Errorf("volume image %s: %w", name, runtime.ErrNotFound)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	return r.WriteFile(ctx, path)
}

// DeleteVolume implements runtime.VolumeMounter.
func (d *Driver) DeleteVolume(ctx context.Context, name string) error {
	_, err := d.snaps.DeleteAndFree(ctx, name)
	return err
}

// volumeDir is where the capsule's volume clones are mounted.
func (d *Driver) volumeDir(key string) string {
	return filepath.Join(d.cfg.StateDir, "volmounts", key)
}

// checkVolumes refuses volumes the driver cannot mount.
func (d *Driver) checkVolumes(spec runtime.Spec) error {
	if len(spec.Volumes) == 0 {
		return nil
	}
	if d.rt.runsc {
		return fmt.Errorf("%w: the gvisor isolation does not mount volumes", runtime.ErrNotSupported)
	}
	for _, v := range spec.Volumes {
		if !filepath.IsAbs(v.Path) || filepath.Clean(v.Path) != v.Path || v.Path == "/" || v.Source == "" {
			return fmt.Errorf("%w: volume mount %q", runtime.ErrInvalidSpec, v.Path)
		}
	}
	return nil
}

// mountVolumes makes the capsule's volume clones (the "volumes" step).
func (d *Driver) mountVolumes(rec *record) (err error) {
	if len(rec.Spec.Volumes) == 0 {
		return nil
	}
	ns := -1
	if rec.IDBase != 0 {
		if ns, err = openUserns(rec.IDBase); err != nil {
			return err
		}
		defer unix.Close(ns)
	}
	defer func() {
		if err != nil {
			_ = d.unmountVolumes(rec.Key)
		}
	}()
	for i, v := range rec.Spec.Volumes {
		if err := rootfs.BindClone(v.Source, filepath.Join(d.volumeDir(rec.Key), strconv.Itoa(i)), ns, v.ReadOnly); err != nil {
			return fmt.Errorf("container: volume %s: %w", v.VolumeID, err)
		}
	}
	return nil
}

// unmountVolumes unmounts the capsule's volume clones and removes their
// directory (only once nothing is mounted there).
func (d *Driver) unmountVolumes(key string) error {
	dir := d.volumeDir(key)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil
	}
	if err := unmountUnder(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// volumeOCIMounts binds the clones at their paths.
func (d *Driver) volumeOCIMounts(rec *record) []specs.Mount {
	out := make([]specs.Mount, 0, len(rec.Spec.Volumes))
	for i, v := range rec.Spec.Volumes {
		opts := []string{"rbind", "nosuid", "nodev"}
		if v.ReadOnly {
			opts = append(opts, "ro")
		}
		out = append(out, specs.Mount{
			Destination: v.Path, Type: "bind", Source: filepath.Join(d.volumeDir(rec.Key), strconv.Itoa(i)), Options: opts,
		})
	}
	return out
}

// volumesStep is the create step that mounts the clones.
func (d *Driver) volumesStep(rec *record) runtime.Step {
	return runtime.Step{
		Name: "volumes",
		Do:   func(context.Context) error { return d.mountVolumes(rec) },
		Undo: func(context.Context) error { return d.unmountVolumes(rec.Key) },
	}
}
