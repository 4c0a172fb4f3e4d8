package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// snapshotCmd is `wrenn capsule snapshot CAPSULE NAME`: the running
// capsule becomes a team template (docs/TEMPLATES.md).
func (cc *capsuleCmd) snapshotCmd() *cobra.Command {
	var filesOnly, asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshot CAPSULE NAME",
		Short: "Turn a running capsule into a team template (files, and its running processes where the host can)",
		Long: `Turn a running capsule into a template of its team, called NAME ("name" or
"name:tag"). The files are kept and, where the capsule's host can (CRIU), the
memory of its processes too: capsules created from the template then start
with those processes already running (a web server answers at once). The
capsule keeps running; it is frozen for a moment while it is copied.`,
		Example: `  wrenn capsule snapshot cl-abc123 web:v1
  wrenn capsule create --template web:v1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := cc.c.Snapshot(cmd.Context(), args[0], args[1], wrenn.SnapshotOptions{FilesOnly: filesOnly})
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), t)
			}
			what := "files"
			if t.Memory {
				what = "files and memory"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\t%s\n", t.Name, t.ID, humanBytes(t.SizeBytes), what)
			if t.MemoryReason != "" && !filesOnly {
				fmt.Fprintf(cmd.ErrOrStderr(), "memory not kept: %s\n", t.MemoryReason)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&filesOnly, "files-only", false, "keep the files only, not the processes' memory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the template as JSON")
	return cmd
}
