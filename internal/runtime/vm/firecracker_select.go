package vm

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
)

// FirecrackerOptions is how `wrenn agent` asks for Firecracker.
type FirecrackerOptions struct {
	// Bin is the firecracker binary (--firecracker-bin); "" means QEMU.
	Bin string
	// JailerBin (--firecracker-jailer), if set, runs every VM under the
	// jailer with its chroots in ChrootBase (default /srv/jailer).
	JailerBin, ChrootBase string
	// TxRateLimit sets the seed's NIC transmit limit (TxRateLimitSeed).
	TxRateLimit bool
	// KernelDir is the guest kernel directory (it must hold vmlinux).
	KernelDir string
}

// ChooseFirecracker returns the Firecracker backend when opts asks for it
// and this host can run it: KVM works (the same probe as QEMU's: a VM must
// actually run on /dev/kvm, a device node alone is not enough) and the
// guest kernel directory has the uncompressed vmlinux; otherwise nil and
// why (the driver then uses QEMU). A configured binary that is missing or
// of another version, or a jailer that is not there, is an error: the
// operator asked for something broken.
func ChooseFirecracker(ctx context.Context, opts FirecrackerOptions, log *slog.Logger) (*Firecracker, string, error) {
	if opts.Bin == "" {
		return nil, "no Firecracker binary configured (--firecracker-bin)", nil
	}
	var jailer *JailerConfig
	if opts.JailerBin != "" {
		jailer = &JailerConfig{Path: opts.JailerBin, ChrootBase: opts.ChrootBase}
	}
	f, err := NewFirecracker(ctx, opts.Bin, jailer, log)
	if err != nil {
		return nil, "", err
	}
	vmlinux := filepath.Join(opts.KernelDir, "vmlinux")
	if !fileExists(vmlinux) {
		return nil, fmt.Sprintf("the guest kernel directory %s has no vmlinux (scripts/guest-kernel.sh makes one)", opts.KernelDir), nil
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, "cannot probe KVM: qemu-system-x86_64 not found (the KVM probe boots the guest kernel once)", nil
	}
	if !kvmUsable(qemu, filepath.Join(opts.KernelDir, "vmlinuz")) {
		return nil, "KVM does not work on this host (/dev/kvm missing, not accessible, or its vCPUs do not run); Firecracker needs it", nil
	}
	if opts.TxRateLimit {
		tb := TxRateLimitSeed
		f.TxRateLimit = &tb
	}
	return f, "", nil
}
