package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// isolationHelp describes the isolation names (flag help).
const isolationHelp = "isolation: container (runc), gvisor (gVisor's user-space kernel) or microvm (own kernel in a VM)"

// clearIsolation is the argument that clears a default isolation.
const clearIsolation = "default"

func isolationArg(s string) string {
	if s == clearIsolation {
		return ""
	}
	return s
}

// templateSetIsolationCmd is `wrenn template set-isolation`.
func templateSetIsolationCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "set-isolation TEMPLATE ISOLATION",
		Short: "Set the isolation of capsules created from one of the team's templates",
		Long: `Set the default isolation of capsules created from TEMPLATE (a name or id of
one of the team's own templates) when the create names none: container,
gvisor or microvm; "default" clears it (the team's default applies). Needs
the admin role in the team.`,
		Example: `  wrenn template set-isolation python gvisor
  wrenn template set-isolation python default`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.resolve()
			if err != nil {
				return err
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			id := args[0]
			ts, err := c.Templates(cmd.Context())
			if err != nil {
				return friendly(err, cfg.URL)
			}
			for _, t := range ts {
				if t.Name == id {
					id = t.ID
					break
				}
			}
			t, err := c.SetTemplateIsolation(cmd.Context(), id, isolationArg(args[1]))
			if err != nil {
				return friendly(err, cfg.URL)
			}
			iso := t.Isolation
			if iso == "" {
				iso = "the team's default"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Template %s: capsules get %s isolation\n", t.Name, iso)
			return err
		},
	}
}

// newTeamCmd is `wrenn team`: the current team's settings.
func newTeamCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "team",
		Short: "Show and change the current team's settings",
	}
	addClientFlags(cmd, &f)
	cmd.AddCommand(&cobra.Command{
		Use:   "set-isolation ISOLATION",
		Short: "Set the default isolation of the team's new capsules",
		Long: `Set the isolation the team's new capsules get when neither the create nor
their template names one: container, gvisor or microvm; "default" clears it
(the platform's --default-isolation applies). Needs the admin role in the
team.`,
		Example: `  wrenn team set-isolation gvisor
  wrenn team set-isolation default`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.resolve()
			if err != nil {
				return err
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			me, err := c.Me(cmd.Context())
			if err != nil {
				return friendly(err, cfg.URL)
			}
			t, err := c.SetTeamDefaultIsolation(cmd.Context(), me.TeamID, isolationArg(args[0]))
			if err != nil {
				return friendly(err, cfg.URL)
			}
			iso := t.DefaultIsolation
			if iso == "" {
				iso = "the platform's default"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Team %s: new capsules get %s isolation\n", t.Name, iso)
			return err
		},
	})
	return cmd
}
