package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// networkFlags are the egress policy flags of `capsule create` and
// `capsule network set`.
type networkFlags struct {
	allowOut, denyOut      []string
	egress, ingress, burst int
	allowOnly              bool
	internet               string // network set only: "", "on", "off"
	flagsRef               *pflag.FlagSet
}

func (n *networkFlags) add(fl *pflag.FlagSet) {
	n.flagsRef = fl
	fl.StringSliceVar(&n.allowOut, "allow-out", nil, "destination the capsule may reach: CIDR, IP or domain (*.example.com for every name below it); repeatable or comma-separated; wins over --deny-out")
	fl.StringSliceVar(&n.denyOut, "deny-out", nil, "destination the capsule may not reach (0.0.0.0/0: everything --allow-out does not allow); repeatable or comma-separated")
	fl.BoolVar(&n.allowOnly, "allow-only", false, "deny every destination --allow-out does not allow (adds --deny-out 0.0.0.0/0)")
	fl.IntVar(&n.egress, "egress-mbps", 0, fmt.Sprintf("upload limit in MB/s (default %d)", runtime.DefaultEgressMBps))
	fl.IntVar(&n.ingress, "ingress-mbps", 0, fmt.Sprintf("download limit in MB/s (default %d)", runtime.DefaultIngressMBps))
	fl.IntVar(&n.burst, "burst-mb", 0, fmt.Sprintf("burst of both limits in MB (default %d)", runtime.DefaultBurstMB))
}

// policy returns the policy the flags describe (nil when none was given).
func (n *networkFlags) policy() *wrenn.Network {
	set := false
	for _, f := range []string{"allow-out", "deny-out", "allow-only", "egress-mbps", "ingress-mbps", "burst-mb"} {
		set = set || n.flagsRef.Changed(f)
	}
	if !set {
		return nil
	}
	deny := n.denyOut
	if n.allowOnly && !containsAll(deny) {
		deny = append(deny, "0.0.0.0/0")
	}
	return &wrenn.Network{AllowOut: n.allowOut, DenyOut: deny, EgressMbps: n.egress, IngressMbps: n.ingress, BurstMB: n.burst}
}

func containsAll(rules []string) bool {
	for _, r := range rules {
		if strings.TrimSpace(r) == "0.0.0.0/0" {
			return true
		}
	}
	return false
}

// networkCmd is `wrenn capsule network`.
func (cc *capsuleCmd) networkCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Show or change a capsule's egress policy and rate limits",
	}
	var n networkFlags
	var asJSON bool
	set := &cobra.Command{
		Use:   "set CAPSULE",
		Short: "Replace a capsule's egress policy, live (established connections keep flowing)",
		Long: `Replace the egress policy and rate limits of a running or paused capsule. The
flags describe the whole new policy: rules not given are removed, limits not
given return to their defaults. An allow rule wins over a deny rule. The host,
other capsules, link-local addresses (with 169.254.169.254) and private
ranges stay unreachable whatever the policy.`,
		Example: `  wrenn capsule network set cl-abc --allow-only --allow-out pypi.org,'*.pythonhosted.org'
  wrenn capsule network set cl-abc --deny-out 203.0.113.0/24 --egress-mbps 10
  wrenn capsule network set cl-abc --internet off
  wrenn capsule network set cl-abc            # back to the defaults`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u := wrenn.NetworkUpdate{Network: n.policy()}
			switch n.internet {
			case "":
			case "on", "off":
				v := n.internet == "on"
				u.AllowInternet = &v
			default:
				return fmt.Errorf("--internet %q: want on or off", n.internet)
			}
			c, err := cc.c.SetNetwork(cmd.Context(), args[0], u)
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), c)
			}
			return printNetwork(cmd, c)
		},
	}
	n.add(set.Flags())
	set.Flags().StringVar(&n.internet, "internet", "", "on or off: switch outbound internet (default: unchanged)")
	set.Flags().BoolVar(&asJSON, "json", false, "print the capsule as JSON")
	show := &cobra.Command{
		Use:   "get CAPSULE",
		Short: "Show a capsule's egress policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cc.c.Get(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), c.Network)
			}
			return printNetwork(cmd, c)
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the policy as JSON")
	cmd.AddCommand(set, show)
	return cmd
}

func printNetwork(cmd *cobra.Command, c *wrenn.Capsule) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Internet\t%s\n", map[bool]string{true: "on", false: "off"}[c.AllowInternet])
	fmt.Fprint(tw, networkLines(c.Network))
	return tw.Flush()
}

// networkLines describes a policy for `capsule get` and `network get`.
func networkLines(n *wrenn.Network) string {
	var b strings.Builder
	if n == nil {
		n = &wrenn.Network{}
	}
	if len(n.AllowOut) > 0 {
		fmt.Fprintf(&b, "Allow\t%s\n", strings.Join(n.AllowOut, ", "))
	}
	if len(n.DenyOut) > 0 {
		fmt.Fprintf(&b, "Deny\t%s\n", strings.Join(n.DenyOut, ", "))
	}
	rate := func(v, def int) int {
		if v == 0 {
			return def
		}
		return v
	}
	fmt.Fprintf(&b, "Rates\t%d MB/s out, %d MB/s in, %d MB burst\n",
		rate(n.EgressMbps, runtime.DefaultEgressMBps), rate(n.IngressMbps, runtime.DefaultIngressMBps), rate(n.BurstMB, runtime.DefaultBurstMB))
	return b.String()
}
