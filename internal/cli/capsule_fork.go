package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

// forkCmd is `wrenn capsule fork CAPSULE [--count N]`.
func (cc *capsuleCmd) forkCmd() *cobra.Command {
	var (
		count  int
		quiet  bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "fork CAPSULE",
		Short: "Copy a running or paused capsule (files and running processes)",
		Long: `Make copies of a running or paused capsule: its files and, where its host
keeps memory, its running processes, which continue in each copy from
where the original was. Each copy has its own id, network and disk; the
original keeps running. The copies share one base template (stored once).`,
		Example: `  wrenn capsule fork cl-3k9xq2m7a1b4c5d6 --count 3
  ids=$(wrenn capsule fork -q cl-3k9xq2m7a1b4c5d6 -n 5)`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 || count > 20 {
				return fmt.Errorf("--count must be between 1 and 20")
			}
			res, err := cc.c.Fork(cmd.Context(), args[0], count)
			if err != nil {
				return cc.wrap(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, res)
			}
			for _, c := range res.Capsules {
				if quiet {
					fmt.Fprintln(out, c.ID)
				} else {
					fmt.Fprintf(out, "Forked %s → %s (%s)\n", args[0], c.ID, c.Status)
				}
			}
			if !quiet {
				fmt.Fprintf(out, "Base template %s; processes kept: %s\n", res.BaseTemplateID, strconv.FormatBool(res.MemoryKept))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&count, "count", "n", 1, "how many copies (1 to 20)")
	fl.BoolVarP(&quiet, "quiet", "q", false, "print only the copies' ids")
	fl.BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}
