package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/buildinfo"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// agentFlags are the flags of `wrenn agent`.
type agentFlags struct {
	listen          string
	home            string
	stateDir        string
	templatesDir    string
	envdPath        string
	rootfsSize      string
	defaultTemplate string
	defaultTimeout  time.Duration
	secretFile      string
	tlsCert         string
	tlsKey          string
	clientCA        string
	logLevel        string
	warmPools       *warmPoolsFlag
	snapshotGC      time.Duration
	criu            criuFlags
	overcommit      overcommitFlags
	dnsUpstream     []string
	templateStore   templateStoreFlags
	microvm         bool
	microvmSubnet   string
	guestKernel     string
	firecracker     firecrackerFlags
	runsc           string
	gvisorSubnet    string
	instance        string
	subnet          string
	join            joinFlags
}

// newAgentCmd returns `wrenn agent`: the host agent serving the control
// plane over Connect RPC (HTTP/1.1) and running capsules with the
// container driver.
func newAgentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent: capsules on this host, served to the control plane over Connect RPC",
		Long: `Run the host agent. It runs capsules with the container runtime driver
(runc, namespaces, cgroups) and serves the control plane on --listen over
Connect RPC (HTTP/1.1). It must run as root. After a crash or kill -9,
starting it again re-adopts every capsule it can and cleans up the rest.

Environment: WRENN_HOME (default /var/lib/wrenn), WRENN_DEFAULT_ROOTFS_SIZE
(e.g. 30Gi), WRENN_AGENT_SECRET (the host secret, if --secret-file is unset),
WRENN_CRIU (the criu binary for memory snapshots).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	home := os.Getenv("WRENN_HOME")
	if home == "" {
		home = "/var/lib/wrenn"
	}
	size := os.Getenv("WRENN_DEFAULT_ROOTFS_SIZE")
	if size == "" {
		size = "5120MiB"
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", ":50051", "address to serve the control plane on")
	fl.StringVar(&f.home, "home", home, "Wrenn home directory ($WRENN_HOME)")
	fl.StringVar(&f.stateDir, "state-dir", "", "agent and driver state (default <home>/agent)")
	fl.StringVar(&f.templatesDir, "templates-dir", "", "template store (default <home>/templates)")
	fl.StringVar(&f.envdPath, "envd-path", "", "static envd binary put into every capsule (default: envd next to this binary)")
	fl.StringVar(&f.rootfsSize, "default-rootfs-size", size, "default writable disk per capsule, e.g. 5Gi ($WRENN_DEFAULT_ROOTFS_SIZE)")
	fl.StringVar(&f.defaultTemplate, "default-template", "base", "template used when a create names none")
	fl.DurationVar(&f.defaultTimeout, "default-timeout", 300*time.Second, "capsule time to live when a create gives none")
	fl.StringVar(&f.secretFile, "secret-file", "", "file holding the host secret the control plane must send ($WRENN_AGENT_SECRET)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM) to serve TLS")
	fl.StringVar(&f.tlsKey, "tls-key", "", "server key (PEM)")
	fl.StringVar(&f.clientCA, "client-ca", "", "CA (PEM) that client certificates must chain to (mutual TLS)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.criu.register(fl)
	f.overcommit.register(fl)
	f.templateStore.register(fl)
	fl.DurationVar(&f.snapshotGC, "snapshot-gc-interval", 10*time.Minute, "how often to delete snapshot data no snapshot references (negative: never)")
	f.warmPools = newWarmPoolsFlag()
	fl.Var(f.warmPools, "warm-pool", "started-and-frozen capsules kept per template for fast creates: template=N, template=auto (sized by the create rate and free memory), or off")
	fl.StringVar(&f.runsc, "runsc", os.Getenv("WRENN_RUNSC"), "static runsc binary for gVisor capsules (isolation \"gvisor\"; scripts/runsc.sh builds one; $WRENN_RUNSC); empty: gVisor off")
	fl.StringVar(&f.gvisorSubnet, "gvisor-subnet", "10.201.0.0/16", "IPv4 range of gVisor capsules (their own nftables table; must differ from the container capsules' 10.200.0.0/16)")
	fl.StringSliceVar(&f.dnsUpstream, "dns-upstream", nil, "resolvers the capsules' DNS forwarder asks, IP[:port] (default: the host's, from /etc/resolv.conf)")
	fl.BoolVar(&f.microvm, "microvm", false, "also offer microVM isolation (QEMU; KVM where it works, else TCG; guest kernel from scripts/guest-kernel.sh)")
	fl.StringVar(&f.microvmSubnet, "microvm-subnet", "10.202.0.0/16", "IPv4 range of microVM capsules (their own nftables table; must differ from the container and gVisor ranges)")
	fl.StringVar(&f.instance, "instance", "wrenn", "name of this agent's host objects: cgroup parent /NAME, nftables table NAME, network namespaces NAME-… (several agents on one machine need different names)")
	fl.StringVar(&f.subnet, "subnet", "10.200.0.0/16", "IPv4 range of container capsules (each agent on a machine needs its own)")
	f.join.register(fl)
	fl.StringVar(&f.guestKernel, "guest-kernel", "", "microVM guest kernel directory made by scripts/guest-kernel.sh (default: the newest in "+vm.KernelCache+")")
	f.firecracker.register(fl)
	return cmd
}

func runAgent(ctx context.Context, f agentFlags, stderr interface{ Write([]byte) (int, error) }) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if f.stateDir == "" {
		f.stateDir = filepath.Join(f.home, "agent")
	}
	if f.templatesDir == "" {
		f.templatesDir = filepath.Join(f.home, "templates")
	}
	if f.envdPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		f.envdPath = filepath.Join(filepath.Dir(exe), "envd")
	}
	sizeBytes, err := humanize.ParseBytes(f.rootfsSize)
	if err != nil {
		return fmt.Errorf("--default-rootfs-size %q: %w", f.rootfsSize, err)
	}
	secret := os.Getenv("WRENN_AGENT_SECRET")
	if f.secretFile != "" {
		b, err := os.ReadFile(f.secretFile)
		if err != nil {
			return fmt.Errorf("--secret-file: %w", err)
		}
		secret = string(bytes.TrimSpace(b))
	}
	if secret == "" {
		log.Warn("no host secret set: every caller that reaches --listen controls this host's capsules")
	}
	if err := f.overcommit.o.Validate(); err != nil {
		return fmt.Errorf("overcommit flags: %w", err)
	}
	srvCfg := hostagent.ServerConfig{Addr: f.listen, TLSCert: f.tlsCert, TLSKey: f.tlsKey, ClientCA: f.clientCA, Logger: log}
	if _, err := srvCfg.TLSConfig(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the host agent must run as root (namespaces, cgroups, mounts)")
	}
	if !instanceRe.MatchString(f.instance) {
		return fmt.Errorf("--instance %q: use 1–20 lower-case letters, digits and dashes, starting with a letter", f.instance)
	}
	subnet, err := netip.ParsePrefix(f.subnet)
	if err != nil {
		return fmt.Errorf("--subnet %q: %w", f.subnet, err)
	}
	if f.join.controlPlane != "" && (f.secretFile != "" || secret != "") {
		return errors.New("--control-plane: the host secret is the credential the control plane issues at registration; drop --secret-file / WRENN_AGENT_SECRET")
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	templates := &template.Store{Dir: f.templatesDir}
	if err := os.MkdirAll(templates.Dir, 0o755); err != nil {
		return err
	}
	snaps, err := f.templateStore.openSnapshots(filepath.Join(f.stateDir, "snapshot-store-tmp"), os.Getenv("WRENN_S3_ACCESS_KEY"), os.Getenv("WRENN_S3_SECRET_KEY"))
	if err != nil {
		return err
	}
	drv, err := container.New(ctx, container.Config{
		Snapshots:         snaps,
		StateDir:          filepath.Join(f.stateDir, "container"),
		Templates:         *templates,
		EnvdPath:          f.envdPath,
		DefaultDiskSizeMB: int(sizeBytes >> 20), //nolint:gosec // sizes are far below 2^63 MiB
		CRIUPath:          f.criu.path,
		CRIUEnv:           f.criu.env,
		DisableCRIU:       f.criu.off,
		DisableUserNS:     f.criu.noUserNS,
		ColdSpares:        f.criu.spares,
		CgroupParent:      "/" + f.instance,
		Network:           network.Config{Subnet: subnet, Table: f.instance, NetnsPrefix: f.instance + "-", DNSUpstream: f.dnsUpstream},
		Logger:            log,
	})
	if err != nil {
		return err
	}
	defer func() { _ = drv.Close() }()
	var shared *template.Shared
	sm, err := f.templateStore.open(filepath.Join(f.stateDir, "template-store-tmp"), os.Getenv("WRENN_S3_ACCESS_KEY"), os.Getenv("WRENN_S3_SECRET_KEY"))
	if err != nil {
		return err
	}
	if sm != nil {
		shared = &template.Shared{Snaps: sm, Local: templates, Log: log}
	}
	// One driver per isolation (runtime.Isolations routes each capsule to
	// its own); a microVM driver registers here the same way.
	isos := runtime.NewIsolations(runtime.IsolationContainer)
	isos.Register(runtime.IsolationContainer, drv)
	defer func() { _ = isos.Close() }()
	if f.runsc == "" {
		isos.Unavailable(runtime.IsolationGVisor, "runsc is not configured (--runsc or WRENN_RUNSC; scripts/runsc.sh builds it)")
	} else if subnet, err := netip.ParsePrefix(f.gvisorSubnet); err != nil {
		return fmt.Errorf("--gvisor-subnet %q: %w", f.gvisorSubnet, err)
	} else {
		gdrv, err := container.New(ctx, container.Config{
			StateDir:          filepath.Join(f.stateDir, "gvisor"),
			Templates:         *templates,
			EnvdPath:          f.envdPath,
			DefaultDiskSizeMB: int(sizeBytes >> 20), //nolint:gosec // sizes are far below 2^63 MiB
			Runtime:           container.RuntimeRunsc,
			RunscPath:         f.runsc,
			CgroupParent:      "/" + f.instance + "-gvisor",
			Network:           network.Config{Subnet: subnet, Table: f.instance + "-gvisor", NetnsPrefix: f.instance + "-gv-", DNSUpstream: f.dnsUpstream},
			Logger:            log,
		})
		if err != nil {
			log.Warn("gVisor isolation unavailable", "err", err)
			isos.Unavailable(runtime.IsolationGVisor, err.Error())
		} else {
			isos.Register(runtime.IsolationGVisor, gdrv)
		}
	}
	if !f.microvm {
		isos.Unavailable(runtime.IsolationMicroVM, "the microVM driver is not enabled (--microvm)")
	} else if subnet, err := netip.ParsePrefix(f.microvmSubnet); err != nil {
		return fmt.Errorf("--microvm-subnet %q: %w", f.microvmSubnet, err)
	} else if vdrv, err := newVMDriver(ctx, f, templates, sizeBytes, subnet, log); err != nil {
		log.Warn("microVM isolation unavailable", "err", err)
		isos.Unavailable(runtime.IsolationMicroVM, err.Error())
	} else {
		isos.Register(runtime.IsolationMicroVM, vdrv)
	}
	log.Info("isolations", "supported", isos.Supported(), "missing", isos.Missing(), "default", isos.Default())
	// Joining a control plane (--control-plane): register once (the
	// credential becomes this agent's secret), heartbeat after serving.
	// Registration comes last before serving: a registered host counts as
	// online, so the drivers must be ready by then.
	var joined *joinState
	if f.join.controlPlane != "" {
		if joined, err = f.join.join(ctx, f.stateDir, f.listen, log); err != nil {
			return err
		}
		secret = joined.Credential
	}
	agent, err := hostagent.New(ctx, hostagent.Config{
		Driver:             isos,
		StateDir:           f.stateDir,
		Templates:          templates,
		SharedTemplates:    shared,
		DefaultTemplate:    f.defaultTemplate,
		DefaultTimeout:     f.defaultTimeout,
		Secret:             secret,
		WarmPools:          f.warmPools.pools(),
		SnapshotGCInterval: f.snapshotGC,
		// An explicit --snapshot-store is one every host shares (an S3
		// bucket, or a directory they all mount): container capsules
		// paused to disk can then move to another host.
		SharedSnapshotIsolations: sharedSnapshotIsolations(snaps != nil),
		Version:                  buildinfo.Version,
		CPUOvercommit:            f.overcommit.o.CPU,
		MemoryOvercommit:         f.overcommit.o.Memory,
		DiskOvercommit:           f.overcommit.o.Disk,
		Logger:                   log,
	})
	if err != nil {
		return err
	}
	defer func() { _ = agent.Close() }()
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	log.Info("host agent serving", "addr", ln.Addr().String(), "tls", f.tlsCert != "", "mtls", f.clientCA != "")
	if joined != nil {
		hbCtx, stopHB := context.WithCancel(ctx)
		defer stopHB()
		go joined.heartbeat(hbCtx, agent, f, log)
	}
	return agent.Serve(ctx, ln, srvCfg)
}

// newVMDriver is the microVM driver of `wrenn agent --microvm`.
func newVMDriver(ctx context.Context, f agentFlags, templates *template.Store, sizeBytes uint64, subnet netip.Prefix, log *slog.Logger) (*vm.Driver, error) {
	kernel := f.guestKernel
	if kernel == "" {
		var err error
		if kernel, err = vm.FindKernel(vm.KernelCache); err != nil {
			return nil, err
		}
	}
	cfg := vm.Config{
		StateDir:          filepath.Join(f.stateDir, "microvm"),
		Templates:         *templates,
		EnvdPath:          f.envdPath,
		KernelDir:         kernel,
		DefaultDiskSizeMB: int(sizeBytes >> 20), //nolint:gosec // sizes are far below 2^63 MiB
		Network:           network.Config{Subnet: subnet, Table: f.instance + "-vm", NetnsPrefix: f.instance + "-vm-", DNSUpstream: f.dnsUpstream},
		Logger:            log,
	}
	if err := f.firecracker.apply(ctx, &cfg, log); err != nil {
		return nil, err
	}
	d, err := vm.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	log.Info("microVM backend", "microvm_backend", d.Backend())
	return d, nil
}

// sharedSnapshotIsolations lists the isolations whose capsules can move
// (hostagent.Config.SharedSnapshotIsolations): container capsules when the
// container driver's snapshot store is shared.
func sharedSnapshotIsolations(shared bool) []string {
	if !shared {
		return nil
	}
	return []string{runtime.IsolationContainer}
}
