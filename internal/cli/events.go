package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// newEventsCmd returns `wrenn events`.
func newEventsCmd() *cobra.Command {
	cc := &capsuleCmd{}
	var (
		p      wrenn.EventsParams
		follow bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the team's life-cycle events (capsules, template builds, hosts)",
		Long: `List the team's event log oldest first (--after an event id, --type,
--subject), or follow it live with --follow (Server-Sent Events; resumes
after --after). Types: capsule.created|running|paused|resumed|forked|
timed_out|destroyed|error, template.build.succeeded|failed, host.up|down.`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: func(*cobra.Command, []string) error { return cc.connect() },
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if !follow {
				evs, next, err := cc.c.Events(ctx, p)
				if err != nil {
					return cc.wrap(err)
				}
				if asJSON {
					if evs == nil {
						evs = []wrenn.Event{}
					}
					return writeJSON(out, map[string]any{"events": evs, "next_cursor": next})
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tTIME\tTYPE\tSUBJECT\tDATA")
				for _, e := range evs {
					printEvent(tw, e)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				if next != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "more: wrenn events --after %s\n", next)
				}
				return nil
			}
			p.LastEventID = p.Cursor
			for {
				s, err := cc.c.StreamEvents(ctx, p)
				if err != nil {
					return cc.wrap(err)
				}
				for {
					e, err := s.Next()
					if err != nil {
						_ = s.Close()
						if ctx.Err() != nil {
							return nil
						}
						if !errors.Is(err, io.EOF) {
							fmt.Fprintf(cmd.ErrOrStderr(), "stream interrupted (%v); resuming after %s\n", err, s.LastID())
						}
						break
					}
					if asJSON {
						b, _ := json.Marshal(e)
						fmt.Fprintln(out, string(b))
					} else {
						printEvent(out, e)
					}
				}
				p.LastEventID = s.LastID()
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	addClientFlags(cmd, &cc.flags)
	fl := cmd.Flags()
	fl.StringVar(&p.Type, "type", "", "only events of this type")
	fl.StringVar(&p.Subject, "subject", "", "only events about this capsule, build or host id")
	fl.StringVar(&p.Cursor, "after", "", "start after this event id")
	fl.IntVar(&p.Limit, "limit", 100, "events per page (1-1000; without --follow)")
	fl.BoolVarP(&follow, "follow", "f", false, "stream new events until interrupted")
	fl.BoolVar(&asJSON, "json", false, "print JSON (one object per line with --follow)")
	return cmd
}

func printEvent(w io.Writer, e wrenn.Event) {
	data, _ := json.Marshal(e.Data)
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.Time.Local().Format(time.DateTime), e.Type, e.Subject, data)
}

// newWebhookCmd returns `wrenn webhook`.
func newWebhookCmd() *cobra.Command {
	cc := &capsuleCmd{}
	cmd := &cobra.Command{
		Use:     "webhook",
		Aliases: []string{"webhooks"},
		Short:   "Manage the team's signed webhook endpoints",
		Long: `Webhook endpoints receive the team's events as signed POSTs (header
Wrenn-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">, and
Wrenn-Event-Id), retried with backoff for 24 h. The secret is printed once,
by create and rotate-secret. Needs the admin role in the team.`,
		PersistentPreRunE: func(*cobra.Command, []string) error { return cc.connect() },
	}
	addClientFlags(cmd, &cc.flags)
	var (
		types   []string
		enabled bool
		asJSON  bool
	)
	create := &cobra.Command{
		Use:   "create URL",
		Short: "Add an endpoint and print its signing secret (shown once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := cc.c.CreateWebhook(cmd.Context(), args[0], types, &enabled)
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "webhook %s → %s\nsecret: %s\n(store it now: it is not shown again)\n", w.ID, w.URL, w.Secret)
			return nil
		},
	}
	create.Flags().StringSliceVar(&types, "event", nil, "event type to deliver (repeatable; default every type)")
	create.Flags().BoolVar(&enabled, "enabled", true, "deliver to it")
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List endpoints", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ws, err := cc.c.Webhooks(cmd.Context())
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				if ws == nil {
					ws = []wrenn.Webhook{}
				}
				return writeJSON(cmd.OutOrStdout(), ws)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tURL\tENABLED\tEVENTS")
			for _, w := range ws {
				ev := strings.Join(w.EventTypes, ",")
				if ev == "" {
					ev = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%t\t%s\n", w.ID, w.URL, w.Enabled, ev)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var (
		newURL       string
		updTypes     []string
		updEnabled   bool
		allTypes     bool
		updateFields = func(cmd *cobra.Command) wrenn.WebhookParams {
			var p wrenn.WebhookParams
			if cmd.Flags().Changed("url") {
				p.URL = &newURL
			}
			if cmd.Flags().Changed("event") || allTypes {
				t := updTypes
				if allTypes {
					t = []string{}
				}
				p.EventTypes = &t
			}
			if cmd.Flags().Changed("enabled") {
				p.Enabled = &updEnabled
			}
			return p
		}
	)
	update := &cobra.Command{
		Use: "update ID", Short: "Change an endpoint's URL, event types or enabled flag", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := cc.c.UpdateWebhook(cmd.Context(), args[0], updateFields(cmd))
			if err != nil {
				return cc.wrap(err)
			}
			return writeJSON(cmd.OutOrStdout(), w)
		},
	}
	update.Flags().StringVar(&newURL, "url", "", "new URL")
	update.Flags().StringSliceVar(&updTypes, "event", nil, "event types to deliver (replaces the list)")
	update.Flags().BoolVar(&allTypes, "all-events", false, "deliver every type")
	update.Flags().BoolVar(&updEnabled, "enabled", true, "deliver to it (--enabled=false pauses it)")

	get := &cobra.Command{
		Use: "get ID", Short: "Show an endpoint", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := cc.c.Webhook(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			return writeJSON(cmd.OutOrStdout(), w)
		},
	}
	rm := &cobra.Command{
		Use: "rm ID", Aliases: []string{"delete"}, Short: "Remove an endpoint and its queued deliveries", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cc.wrap(cc.c.DeleteWebhook(cmd.Context(), args[0]))
		},
	}
	test := &cobra.Command{
		Use: "test ID", Short: "Send a signed webhook.test delivery", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := cc.c.TestWebhook(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "queued delivery %d (see: wrenn webhook deliveries %s)\n", d.ID, args[0])
			return nil
		},
	}
	rotate := &cobra.Command{
		Use: "rotate-secret ID", Short: "Replace the signing secret and print the new one (shown once)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := cc.c.RotateWebhookSecret(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret: %s\n(store it now: it is not shown again)\n", s)
			return nil
		},
	}
	var limit int
	deliveries := &cobra.Command{
		Use: "deliveries ID", Short: "List an endpoint's deliveries, newest first", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ds, err := cc.c.WebhookDeliveries(cmd.Context(), args[0], limit)
			if err != nil {
				return cc.wrap(err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tEVENT\tTYPE\tSTATUS\tATTEMPTS\tHTTP\tERROR")
			for _, d := range ds {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\n", d.ID, d.EventID, d.EventType, d.Status, d.Attempts, d.ResponseStatus, d.LastError)
			}
			return tw.Flush()
		},
	}
	deliveries.Flags().IntVar(&limit, "limit", 50, "deliveries to show (1-500)")
	cmd.AddCommand(create, ls, get, update, rm, test, rotate, deliveries)
	return cmd
}
