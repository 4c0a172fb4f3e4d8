package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/up"
)

type upFlags struct {
	home, listen, proxyListen, onExit, envdPath, cacheDir, mirror, instance, subnet, logLevel, rootfsSize string
	noBase                                                                                                bool
	warmPools                                                                                             *warmPoolsFlag
	pprofListen                                                                                           string
	criu                                                                                                  criuFlags
	overcommit                                                                                            overcommitFlags
	dnsUpstream                                                                                           []string
	github                                                                                                githubFlags
	isolation                                                                                             upIsolationFlags
	eventRetention                                                                                        time.Duration
	webhookAllowPrivate                                                                                   bool
}

// upIsolationFlags choose the isolations `wrenn up` offers besides
// container, and the default one.
type upIsolationFlags struct {
	def, runsc, gvisorSubnet, microvmSubnet, guestKernel string
	microvm                                              bool
}

func (f *upIsolationFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.def, "default-isolation", runtime.IsolationContainer, defaultIsolationUsage)
	fl.StringVar(&f.runsc, "runsc", "", "static runsc binary: also offer gVisor isolation (scripts/runsc.sh builds one; default $WRENN_RUNSC; neither: gVisor off)")
	fl.StringVar(&f.gvisorSubnet, "gvisor-subnet", "10.201.0.0/16", "IPv4 range of gVisor capsules (must differ from --subnet)")
	fl.BoolVar(&f.microvm, "microvm", false, "also offer microVM isolation (QEMU; KVM where it works, else TCG; guest kernel from scripts/guest-kernel.sh)")
	fl.StringVar(&f.microvmSubnet, "microvm-subnet", "10.202.0.0/16", "IPv4 range of microVM capsules (must differ from the other ranges)")
	fl.StringVar(&f.guestKernel, "guest-kernel", "", "microVM guest kernel directory made by scripts/guest-kernel.sh (default: the newest in "+vm.KernelCache+")")
}

// apply puts the flags into cfg.
func (f upIsolationFlags) apply(cfg *up.Config) error {
	if !runtime.ValidIsolation(f.def) {
		return fmt.Errorf("--default-isolation %q: want one of %s", f.def, strings.Join(runtime.KnownIsolations, ", "))
	}
	gv, err := netip.ParsePrefix(f.gvisorSubnet)
	if err != nil {
		return fmt.Errorf("--gvisor-subnet: %w", err)
	}
	mv, err := netip.ParsePrefix(f.microvmSubnet)
	if err != nil {
		return fmt.Errorf("--microvm-subnet: %w", err)
	}
	if f.runsc == "" {
		f.runsc = os.Getenv("WRENN_RUNSC")
	}
	cfg.DefaultIsolation, cfg.RunscPath, cfg.GVisorSubnet = f.def, f.runsc, gv
	cfg.MicroVM, cfg.MicroVMSubnet, cfg.GuestKernel = f.microvm, mv, f.guestKernel
	return nil
}

// newUpCmd returns `wrenn up`: a whole single-node Wrenn in one process.
func newUpCmd() *cobra.Command {
	var f upFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a complete single-node Wrenn: control plane and host agent in one process",
		Long: `Run a complete Wrenn on this machine: the control plane (on an embedded
SQLite database) and a host agent running capsules with the container
driver, in one process. State lives in WRENN_HOME (--home).

On first start it creates the admin user and an admin API key, saved in
$WRENN_HOME/admin.key (mode 0600) and printed once, and builds the
templates: "minimal" (busybox) first, so capsules can be created within
seconds, then "base" (Debian, debootstrap) in the background, cached
machine-wide in --cache-dir.

Stop it with Ctrl-C or SIGTERM: running capsules are paused (and
re-adopted on the next start) or destroyed, as --on-exit says.

It offers container isolation, plus gVisor with --runsc and microVMs with
--microvm where their prerequisites exist; the start message says which
isolations work here and why not the others.

Must run as root. Environment: WRENN_HOME, WRENN_DEFAULT_ROOTFS_SIZE, WRENN_CRIU, WRENN_RUNSC.`,
		Example: `  sudo wrenn up
  sudo wrenn up --listen 0.0.0.0:9725 --proxy-listen 0.0.0.0:9726 --on-exit destroy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runUp(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.home, "home", "", "Wrenn home directory (default $WRENN_HOME, else /var/lib/wrenn)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:9725", "address to serve the API on")
	fl.StringVar(&f.proxyListen, "proxy-listen", controlplane.DefaultProxyListen, "address to serve the port proxy on: capsule ports at /proxy/{capsule}/{port}/")
	fl.StringVar(&f.onExit, "on-exit", "pause", "what happens to running capsules on shutdown: pause or destroy")
	fl.StringVar(&f.pprofListen, "pprof-listen", "", "serve Go's profiler (/debug/pprof/) on this address, e.g. 127.0.0.1:6060 (no authentication: keep it on loopback)")
	fl.StringVar(&f.envdPath, "envd-path", "", "static envd binary put into every capsule (default: envd next to this binary)")
	fl.StringVar(&f.cacheDir, "cache-dir", "/var/cache/wrenn", "machine-wide cache of base template builds")
	fl.StringVar(&f.mirror, "debian-mirror", "http://deb.debian.org/debian", "Debian mirror for the base template")
	fl.BoolVar(&f.noBase, "no-base", false, "do not build the base template")
	fl.StringVar(&f.rootfsSize, "default-rootfs-size", "", "default writable disk per capsule, e.g. 5GiB (default $WRENN_DEFAULT_ROOTFS_SIZE, else 5120MiB)")
	fl.StringVar(&f.instance, "instance", "wrenn", "name of this Wrenn's cgroup parent, nftables table and network namespaces")
	fl.StringVar(&f.subnet, "subnet", "10.200.0.0/16", "private IPv4 range capsule addresses come from")
	f.warmPools = newWarmPoolsFlag()
	fl.Var(f.warmPools, "warm-pool", "started-and-frozen capsules kept per template for fast creates: template=N, template=auto (sized by the create rate and free memory), or off")
	f.criu.register(fl)
	f.overcommit.register(fl)
	fl.StringSliceVar(&f.dnsUpstream, "dns-upstream", nil, "resolvers the capsules' DNS forwarder asks, IP[:port] (default: the host's, from /etc/resolv.conf)")
	fl.StringVar(&f.logLevel, "log-level", "warn", "debug, info, warn or error (logs go to standard error)")
	f.github.register(fl)
	f.isolation.register(fl)
	fl.DurationVar(&f.eventRetention, "event-retention", events.DefaultRetention, "how long the event log keeps events (GET /v1/events)")
	fl.BoolVar(&f.webhookAllowPrivate, "webhook-allow-private", false, "let webhook URLs point at loopback, link-local, private addresses and this host")
	return cmd
}

func runUp(cmd *cobra.Command, f upFlags) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if f.onExit != string(up.OnExitPause) && f.onExit != string(up.OnExitDestroy) {
		return fmt.Errorf("--on-exit must be pause or destroy, not %q", f.onExit)
	}
	subnet, err := netip.ParsePrefix(f.subnet)
	if err != nil {
		return fmt.Errorf("--subnet: %w", err)
	}
	if f.rootfsSize == "" {
		f.rootfsSize = os.Getenv("WRENN_DEFAULT_ROOTFS_SIZE")
	}
	if f.rootfsSize == "" {
		f.rootfsSize = "5120MiB"
	}
	size, err := humanize.ParseBytes(f.rootfsSize)
	if err != nil {
		return fmt.Errorf("--default-rootfs-size %q: %w", f.rootfsSize, err)
	}
	if err := f.overcommit.o.Validate(); err != nil {
		return fmt.Errorf("overcommit flags: %w", err)
	}
	gh, err := f.github.config()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("`wrenn up` must run as root (capsules need namespaces, cgroups and mounts): try sudo wrenn up")
	}
	if f.envdPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		f.envdPath = filepath.Join(filepath.Dir(exe), "envd")
	}
	if _, err := os.Stat(f.envdPath); err != nil {
		return fmt.Errorf("envd (the in-capsule agent) not found at %s: build it (make build) or pass --envd-path", f.envdPath)
	}
	out := cmd.OutOrStdout()
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if f.pprofListen != "" {
		if err := servePprof(ctx, f.pprofListen, log); err != nil {
			return fmt.Errorf("--pprof-listen: %w", err)
		}
	}
	cfg := up.Config{
		Home: resolveHome(f.home), Listen: f.listen, ProxyListen: f.proxyListen, OnExit: up.OnExit(f.onExit), EnvdPath: f.envdPath,
		CacheDir: f.cacheDir, BuildBase: !f.noBase, DebianMirror: f.mirror,
		DefaultDiskSizeMB: int(size >> 20), //nolint:gosec // far below 2^63 MiB
		Instance:          f.instance, Subnet: subnet, DNSUpstream: f.dnsUpstream, WarmPools: f.warmPools.pools(), Out: out, Progress: isTerminal(out), Logger: log,
		CRIUPath: f.criu.path, CRIUEnv: f.criu.env, DisableCRIU: f.criu.off, DisableUserNS: f.criu.noUserNS, ColdSpares: f.criu.spares, Overcommit: f.overcommit.o,
		GitHub: gh, EventRetention: f.eventRetention, WebhookAllowPrivate: f.webhookAllowPrivate,
	}
	if err := f.isolation.apply(&cfg); err != nil {
		return err
	}
	app, err := up.New(ctx, cfg)
	if err != nil {
		return err
	}
	return app.Run(ctx)
}
