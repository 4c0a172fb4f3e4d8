// Package cli builds the `wrenn` command tree: the server, the host agent,
// `wrenn up`, operator tools and the client commands. Commands parse flags
// into typed configs and hand them to the packages that do the work; no
// other package reads flags or the environment.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/buildinfo"
)

// Main runs the wrenn command line with args (without the program name) and
// returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "wrenn:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

// NewRoot returns the root `wrenn` command with every subcommand attached.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "wrenn",
		Short:         "Wrenn: disposable Linux sandboxes (capsules) for AI agents and developers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd())
	root.AddCommand(newSnapshotCmd())
	root.AddCommand(newAgentCmd())
	root.AddCommand(newServerCmd())
	root.AddCommand(newUpCmd(), newLoginCmd(), newCapsuleCmd(), newTemplateCmd(), newTeamCmd(), newDevCmd())
	root.AddCommand(newEventsCmd(), newWebhookCmd())
	root.AddCommand(newVolumeCmd())
	root.AddCommand(newBenchCmd())
	root.AddCommand(newAdminCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this wrenn binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrenn %s (%s)\n", buildinfo.Version, buildinfo.Commit)
			return err
		},
	}
}
