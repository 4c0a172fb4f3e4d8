package cli

import (
	"context"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
)

// firecrackerFlags choose Firecracker for microVM capsules.
type firecrackerFlags struct {
	bin, jailer, chroot string
	txLimit             bool
}

func (f *firecrackerFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.bin, "firecracker-bin", os.Getenv("WRENN_FIRECRACKER"), "Firecracker binary for microVM capsules, used when KVM works (else QEMU); $WRENN_FIRECRACKER")
	fl.StringVar(&f.jailer, "firecracker-jailer", "", "Firecracker's jailer binary: each VM gets its own uid/gid, chroot, cgroup and network namespace (empty: no jailer)")
	fl.StringVar(&f.chroot, "firecracker-chroot", "/srv/jailer", "the jailer's chroot base directory")
	fl.BoolVar(&f.txLimit, "firecracker-tx-limit", false, "also set Firecracker's own NIC transmit limit (200 MB/s sustained, 100 MB burst) besides the host's traffic control")
}

// apply puts Firecracker into cfg when asked for and usable; on a host
// without working KVM the driver keeps QEMU and the reason is logged. A
// broken configuration (binary missing or of another version, jailer
// missing) is an error: microVM isolation is then unavailable, saying why.
func (f *firecrackerFlags) apply(ctx context.Context, cfg *vm.Config, log *slog.Logger) error {
	if f.bin == "" {
		return nil
	}
	fc, why, err := vm.ChooseFirecracker(ctx, vm.FirecrackerOptions{
		Bin: f.bin, JailerBin: f.jailer, ChrootBase: f.chroot, TxRateLimit: f.txLimit, KernelDir: cfg.KernelDir,
	}, log)
	if err != nil {
		return err
	}
	if fc == nil {
		log.Warn("Firecracker configured but not used: microVMs run on QEMU", "reason", why)
		return nil
	}
	kvm := true
	cfg.VMM, cfg.KVM = fc, &kvm
	log.Info("microVMs run on Firecracker", "bin", fc.Bin, "version", fc.Version, "jailer", f.jailer != "")
	return nil
}
