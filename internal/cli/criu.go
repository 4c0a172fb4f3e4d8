package cli

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/runtime/container"
)

// criuFlags choose the CRIU binary the container driver uses for memory
// snapshots (pause to disk that keeps processes running).
type criuFlags struct {
	path string
	env  []string
	off  bool
	// noUserNS runs capsules without user namespaces (container driver).
	noUserNS bool
	// spares is container.Config.ColdSpares.
	spares int
}

func (c *criuFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&c.path, "criu", os.Getenv("WRENN_CRIU"),
		"criu binary for memory snapshots (scripts/criu.sh builds one that works on recent kernels; $WRENN_CRIU; default: criu in PATH). Memory snapshots are on when 'criu check' passes")
	fl.StringSliceVar(&c.env, "criu-env", nil, "extra environment for criu, e.g. CRIU_FAULT=130")
	fl.BoolVar(&c.off, "no-criu", false, "pause to disk keeps files only, never process memory")
	fl.BoolVar(&c.noUserNS, "insecure-no-userns", false,
		"run capsules without a user namespace (capsule root is host root; docs/SECURITY.md). Memory snapshots with user namespaces need the CRIU scripts/criu.sh builds (docs/CRIU.md)")
	fl.IntVar(&c.spares, "cold-spares", container.DefaultColdSpares,
		"network namespaces and blank disks the container driver keeps ready for cold creates (0: off; docs/PERFORMANCE.md)")
}
