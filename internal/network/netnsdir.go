package network

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

var netnsDirMu struct {
	sync.Mutex
	ready bool
}

// EnsureNetnsDir makes /run/netns a mount point of its own, shared, as
// iproute2's `ip netns add` does, before any namespace is pinned in it.
// Otherwise the first `ip netns add` run later on the host (by an
// operator, a test, another tool) bind-mounts /run/netns over itself and
// hides the namespaces already pinned there: they can then be neither
// listed nor unmounted, and deleting them fails with EBUSY (a leaked
// namespace). Idempotent; cheap after the first success.
func EnsureNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if netnsDirMu.ready {
		return nil
	}
	if err := ensureSharedMount(netnsDir); err != nil {
		return fmt.Errorf("network: prepare %s: %w", netnsDir, err)
	}
	netnsDirMu.ready = true
	return nil
}

// ensureSharedMount makes dir a shared mount point, bind-mounting it over
// itself (recursively: what is already pinned stays visible) if it is not
// one yet.
func ensureSharedMount(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) { // EINVAL: not a mount point
		return err
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
}
