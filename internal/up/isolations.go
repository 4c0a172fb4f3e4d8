package up

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
)

// extraDriver is the driver of an isolation other than container: what
// Close stops and, on a clean stop, removes (its nftables table and cgroup
// parent).
type extraDriver struct {
	isolation    string
	close        func() error
	net          *network.Manager
	cgroupParent string
}

// startMoreIsolations registers the gVisor and microVM drivers Config
// asks for, or records why this host does not offer them: a missing or
// failing prerequisite never stops `wrenn up` (containers still run), and
// the reason shows in the start message and the host's capabilities.
func (a *App) startMoreIsolations(ctx context.Context, stateDir string) {
	inst := a.cfg.Instance
	if a.cfg.RunscPath == "" {
		a.isos.Unavailable(runtime.IsolationGVisor, "runsc is not configured (--runsc or WRENN_RUNSC; scripts/runsc.sh builds it)")
	} else {
		parent := "/" + inst + "-gvisor"
		gdrv, err := container.New(ctx, container.Config{
			StateDir:          filepath.Join(stateDir, "gvisor"),
			Templates:         *a.tmpls,
			EnvdPath:          a.cfg.EnvdPath,
			DefaultDiskSizeMB: a.cfg.DefaultDiskSizeMB,
			Runtime:           container.RuntimeRunsc,
			RunscPath:         a.cfg.RunscPath,
			CgroupParent:      parent,
			Network:           network.Config{Subnet: a.cfg.GVisorSubnet, Table: inst + "-gv", NetnsPrefix: inst + "-gv-", DNSUpstream: a.cfg.DNSUpstream},
			Logger:            a.cfg.Logger,
		})
		if err != nil {
			a.log.Warn("gVisor isolation unavailable", "err", err)
			a.isos.Unavailable(runtime.IsolationGVisor, err.Error())
		} else {
			a.isos.Register(runtime.IsolationGVisor, gdrv)
			a.more = append(a.more, extraDriver{isolation: runtime.IsolationGVisor, close: gdrv.Close, net: gdrv.Network(), cgroupParent: parent})
		}
	}
	if !a.cfg.MicroVM {
		a.isos.Unavailable(runtime.IsolationMicroVM, "the microVM driver is not enabled (--microvm)")
		return
	}
	kernel := a.cfg.GuestKernel
	if kernel == "" {
		var err error
		if kernel, err = vm.FindKernel(vm.KernelCache); err != nil {
			a.isos.Unavailable(runtime.IsolationMicroVM, err.Error())
			return
		}
	}
	vdrv, err := vm.New(ctx, vm.Config{
		StateDir:          filepath.Join(stateDir, "microvm"),
		Templates:         *a.tmpls,
		EnvdPath:          a.cfg.EnvdPath,
		KernelDir:         kernel,
		DefaultDiskSizeMB: a.cfg.DefaultDiskSizeMB,
		MemDir:            "/dev/shm/" + inst + "-vm",
		SocketDir:         "/run/" + inst + "-vm",
		Network:           network.Config{Subnet: a.cfg.MicroVMSubnet, Table: inst + "-vm", NetnsPrefix: inst + "-vm-", DNSUpstream: a.cfg.DNSUpstream},
		Logger:            a.cfg.Logger,
	})
	if err != nil {
		a.log.Warn("microVM isolation unavailable", "err", err)
		a.isos.Unavailable(runtime.IsolationMicroVM, err.Error())
		return
	}
	a.isos.Register(runtime.IsolationMicroVM, vdrv)
	a.more = append(a.more, extraDriver{isolation: runtime.IsolationMicroVM, close: vdrv.Close, net: vdrv.Network()})
}

// isolationLines says which isolations work here and why not the others,
// for the start message.
func (a *App) isolationLines() string {
	if a.isos == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Isolation (default %s; choose with --isolation on create):\n", a.cfg.DefaultIsolation)
	for _, st := range a.isos.Status() {
		switch {
		case !st.Available:
			fmt.Fprintf(&b, "  %-9s no: %s\n", st.Name, st.Reason)
		case st.Name == runtime.IsolationMicroVM && !st.KVM:
			fmt.Fprintf(&b, "  %-9s yes (%s without KVM: emulated, slow)\n", st.Name, st.Backend)
		case st.Backend != "":
			fmt.Fprintf(&b, "  %-9s yes (%s, KVM)\n", st.Name, st.Backend)
		default:
			fmt.Fprintf(&b, "  %-9s yes\n", st.Name)
		}
	}
	return b.String()
}
