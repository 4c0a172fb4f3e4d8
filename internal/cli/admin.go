package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// newAdminCmd is `wrenn admin`: platform operations (platform admins).
func newAdminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Platform operations (platform admins)",
	}
	cmd.AddCommand(newAdminHostCmd())
	return cmd
}

func newAdminHostCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Drain hosts for maintenance and put them back",
	}
	addClientFlags(cmd, &f)
	var wait time.Duration
	drain := &cobra.Command{
		Use:   "drain HOST_ID",
		Short: "Stop placing capsules on a host and move every capsule off it",
		Long: `Drain a host: the scheduler places nothing new on it, and the control plane
moves every capsule on it to other hosts — running ones are paused to the
shared snapshot store and resumed elsewhere (still running, processes and
memory kept where the hosts keep memory), paused and hibernated ones are
re-homed paused to disk. Capsules that cannot move (a host without a shared
--snapshot-store, a template only that host has) or find no room elsewhere
stay, and the progress says why. With --wait, it waits until the host is
drained (or the wait ends) and prints the progress as it goes.
docs/OPERATIONS.md, "Draining a host".`,
		Example: `  wrenn admin host drain host-01j… --wait 10m
  wrenn admin host undrain host-01j…`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return hostAction(cmd, &f, args[0], wait, (*wrenn.Client).DrainHost)
		},
	}
	drain.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the host to be drained (0: do not wait)")
	undrain := &cobra.Command{
		Use:   "undrain HOST_ID",
		Short: "Let a draining or drained host take capsules again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return hostAction(cmd, &f, args[0], 0, (*wrenn.Client).UndrainHost)
		},
	}
	get := &cobra.Command{
		Use:   "get HOST_ID",
		Short: "Show a host's state and drain progress",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return hostAction(cmd, &f, args[0], 0, (*wrenn.Client).Host)
		},
	}
	cmd.AddCommand(drain, undrain, get)
	return cmd
}

func hostAction(cmd *cobra.Command, f *clientFlags, id string, wait time.Duration, do func(*wrenn.Client, context.Context, string) (*wrenn.Host, error)) error {
	cfg, err := f.resolve()
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	h, err := do(c, ctx, id)
	if err != nil {
		return friendly(err, cfg.URL)
	}
	printHost(cmd.OutOrStdout(), h)
	if wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	for h.Drain != nil && h.Drain.State == "draining" {
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s is still draining after %v", id, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
		if h, err = c.Host(ctx, id); err != nil {
			return friendly(err, cfg.URL)
		}
		printHost(cmd.OutOrStdout(), h)
	}
	return nil
}

func printHost(w io.Writer, h *wrenn.Host) {
	if h.Drain == nil {
		_, _ = fmt.Fprintf(w, "Host %s (%s): %s, schedulable\n", h.ID, h.Address, h.Status)
		return
	}
	d := h.Drain
	_, _ = fmt.Fprintf(w, "Host %s (%s): %s, %s — %d moved, %d left\n", h.ID, h.Address, h.Status, d.State, d.Moved, len(d.Left))
	for _, l := range d.Left {
		reason := l.Reason
		if reason == "" {
			reason = "waiting its turn"
		}
		_, _ = fmt.Fprintf(w, "  %s (%s): %s\n", l.CapsuleID, l.Status, reason)
	}
}
