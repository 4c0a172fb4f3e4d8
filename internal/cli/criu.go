package cli

import (
	"os"

	"github.com/spf13/pflag"
)

// criuFlags choose the CRIU binary the container driver uses for memory
// snapshots (pause to disk that keeps processes running).
type criuFlags struct {
	path string
	env  []string
	off  bool
}

func (c *criuFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&c.path, "criu", os.Getenv("WRENN_CRIU"),
		"criu binary for memory snapshots (scripts/criu.sh builds one that works on recent kernels; $WRENN_CRIU; default: criu in PATH). Memory snapshots are on when 'criu check' passes")
	fl.StringSliceVar(&c.env, "criu-env", nil, "extra environment for criu, e.g. CRIU_FAULT=130")
	fl.BoolVar(&c.off, "no-criu", false, "pause to disk keeps files only, never process memory")
}
