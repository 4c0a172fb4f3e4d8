package vm

import (
	"context"
	"os"
)

// VMM launches and controls virtual machines: the seam between the driver
// (capsule life cycle, disks, network, snapshots) and one hypervisor's
// process and control protocol. QEMU (qemu.go) is the first backend;
// Firecracker, which boots the same kernel (vmlinux) and initramfs, is
// meant to be the second.
type VMM interface {
	// Name is the backend's short name ("qemu").
	Name() string
	// Launch starts a VM for spec. On return the VM process runs and
	// answers its control socket; with spec.Incoming set it has loaded the
	// saved device state and stays paused (the caller resumes it).
	Launch(ctx context.Context, spec MachineSpec) (Machine, error)
	// Attach reconnects to a VM an earlier driver launched (agent
	// restart); it fails if pid is not that VM.
	Attach(ctx context.Context, spec MachineSpec, pid int) (Machine, error)
}

// MachineSpec is one VM's configuration.
type MachineSpec struct {
	// Dir is the capsule's directory (control socket, VMM log).
	Dir string
	// Kernel, Initrd and Cmdline boot the guest.
	Kernel, Initrd, Cmdline string
	VCPUs, MemoryMB         int
	// MemPath is the file holding guest RAM, shared with the VMM (it
	// must exist with the right size, or be creatable).
	MemPath string
	// Disks are attached in order (/dev/vda, /dev/vdb...).
	Disks []Disk
	// Netns is the network namespace path the VMM runs in and Tap the tap
	// device there; MAC the guest NIC's address.
	Netns, Tap, MAC string
	// Incoming, if set, is the saved device state to load instead of
	// booting (see Machine.SaveState); RAM comes from MemPath.
	Incoming *os.File
	// KVM selects hardware virtualisation (else emulation, TCG).
	KVM bool
	// BalloonStatsSeconds is the balloon's statistics interval (0: off).
	BalloonStatsSeconds int
	// Metadata is published to the guest by a VMM that has a metadata
	// service (Firecracker's MMDS: template_id, capsule_id); QEMU ignores it.
	Metadata map[string]string
}

// Disk is one virtio block device.
type Disk struct {
	Path     string
	ReadOnly bool
}

// BalloonInfo is the balloon's state and the guest's memory statistics.
type BalloonInfo struct {
	// ActualBytes is the guest memory left outside the balloon.
	ActualBytes int64
	// FreeBytes and TotalBytes are the guest's own figures (-1: not
	// reported yet); AvailableBytes its MemAvailable.
	FreeBytes, TotalBytes, AvailableBytes int64
	// LastUpdate is when the guest sent those figures (Unix seconds; 0:
	// never).
	LastUpdate int64
}

// BalloonStatsRefresher is a Machine that can ask its guest for fresh
// balloon statistics instead of waiting for the next periodic report
// (optional: the driver falls back to the last report).
type BalloonStatsRefresher interface {
	// RefreshBalloonStats asks the guest for a report now and returns it
	// once it has arrived (within ctx); interval is the periodic
	// statistics interval to keep afterwards (seconds).
	RefreshBalloonStats(ctx context.Context, interval int) (BalloonInfo, error)
}

// Machine is one running VM process.
type Machine interface {
	// PID is the VMM process.
	PID() int
	// Pause stops the vCPUs (memory stays); Resume restarts them.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// GuestStopped reports whether the guest has powered off, panicked or
	// failed (or the VMM is gone): the VM will not run again.
	GuestStopped(ctx context.Context) bool
	// Running reports whether the vCPUs run.
	Running(ctx context.Context) (bool, error)
	// SetBalloon asks the guest to leave target bytes of memory outside
	// the balloon (inflate below the current size, deflate above).
	SetBalloon(ctx context.Context, target int64) error
	// Balloon reads the balloon's state.
	Balloon(ctx context.Context) (BalloonInfo, error)
	// SaveState stops the vCPUs and writes the device state to f; guest
	// RAM, shared with MemPath, is not written (the caller keeps the file).
	SaveState(ctx context.Context, f *os.File) error
	// Console returns the guest's recent console output (boot messages).
	Console(ctx context.Context) string
	// Stop ends the VM process (asks once, then kills) and waits for it.
	Stop(ctx context.Context) error
	// Exited is closed when the VMM process has exited.
	Exited() <-chan struct{}
	// Close drops the control connection; the VM keeps running.
	Close() error
}
