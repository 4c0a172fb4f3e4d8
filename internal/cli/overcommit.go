package cli

import (
	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/scheduler"
)

// overcommitFlags are the ratios a host admits capsules by (`wrenn agent`
// and `wrenn up`); docs/OPERATIONS.md explains the defaults.
type overcommitFlags struct{ o scheduler.Overcommit }

func (f *overcommitFlags) register(fl *pflag.FlagSet) {
	d := scheduler.DefaultOvercommit
	fl.Float64Var(&f.o.CPU, "cpu-overcommit", d.CPU, "vCPUs capsules may be given per host CPU (1-1000; idle capsules use almost no CPU)")
	fl.Float64Var(&f.o.Memory, "memory-overcommit", d.Memory, "memory capsules may be given per MB of host memory (1-1000; an idle capsule touches a few MB of its limit)")
	fl.Float64Var(&f.o.Disk, "disk-overcommit", d.Disk, "capsule disk that may be promised per MB of free disk (1-1000; disks are sparse); one capsule's disk never exceeds the free disk")
}
