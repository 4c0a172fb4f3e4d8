package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// newVolumeCmd returns `wrenn volume`.
func newVolumeCmd() *cobra.Command {
	cc := &capsuleCmd{}
	cmd := &cobra.Command{
		Use:     "volume",
		Aliases: []string{"volumes", "vol"},
		Short:   "Manage the team's persistent volumes",
		Long: `Volumes are named file systems of a fixed size (the quota) that outlive
capsules. Mount them at create (wrenn capsule create --volume NAME:/path[:ro]):
one read-write mount at a time, any number of read-only ones. With no
capsule holding it a volume lives in the snapshot store, so any host can
mount it; its files can be read and written without a capsule (ls, cat,
put, rm). docs/VOLUMES.md.`,
		PersistentPreRunE: func(*cobra.Command, []string) error { return cc.connect() },
	}
	addClientFlags(cmd, &cc.flags)
	var (
		sizeMB int64
		asJSON bool
	)
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an empty volume",
		Example: `  wrenn volume create data --size 2048
  wrenn capsule create --volume data:/data`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := cc.c.CreateVolume(cmd.Context(), args[0], sizeMB)
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Created volume %s (%s, %d MB)\n", v.Name, v.ID, v.SizeMB)
			return err
		},
	}
	create.Flags().Int64Var(&sizeMB, "size", 0, "size (quota) in MB (default 1024, 16 to 102400)")
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	list := &cobra.Command{
		Use: "list", Short: "List volumes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vs, err := cc.c.Volumes(cmd.Context())
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				if vs == nil {
					vs = []wrenn.Volume{}
				}
				return writeJSON(cmd.OutOrStdout(), vs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tSIZE_MB\tLOCATION\tMOUNTS")
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", v.Name, v.ID, v.SizeMB, v.Location, mountsText(v))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	get := &cobra.Command{
		Use: "get NAME", Short: "Show a volume and the capsules that mount it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := cc.c.Volume(cmd.Context(), args[0])
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			where := string(v.Location)
			if v.HostID != "" {
				where += " (" + v.HostID + ")"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "name:     %s\nid:       %s\nsize_mb:  %d\nlocation: %s\nmounts:   %s\ncreated:  %s\n",
				v.Name, v.ID, v.SizeMB, where, mountsText(*v), v.CreatedAt.Format("2006-01-02 15:04:05Z07:00"))
			return err
		},
	}
	get.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a volume and its files (refused while a capsule mounts it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cc.c.DeleteVolume(cmd.Context(), args[0]); err != nil {
				return cc.wrap(err)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "Deleted volume %s\n", args[0])
			return err
		},
	}

	ls := &cobra.Command{
		Use: "ls NAME [PATH]", Short: "List a directory of a volume", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := "/"
			if len(args) == 2 {
				p = args[1]
			}
			es, err := cc.c.ListVolumeFiles(cmd.Context(), args[0], p)
			if err != nil {
				return cc.wrap(err)
			}
			if asJSON {
				if es == nil {
					es = []wrenn.FileEntry{}
				}
				return writeJSON(cmd.OutOrStdout(), es)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, e := range es {
				fmt.Fprintf(tw, "%s\t%d\t%s\n", e.Permissions, e.Size, e.Name)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	cat := &cobra.Command{
		Use: "cat NAME PATH", Short: "Print a file of a volume", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := cc.c.ReadVolumeFile(cmd.Context(), args[0], args[1])
			if err != nil {
				return cc.wrap(err)
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}

	put := &cobra.Command{
		Use: "put NAME LOCAL_FILE|- PATH", Short: "Write a local file (or stdin) into a volume (at most 64 MiB)", Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				b   []byte
				err error
			)
			if args[1] == "-" {
				b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<20+1))
			} else {
				b, err = os.ReadFile(args[1])
			}
			if err != nil {
				return err
			}
			e, err := cc.c.WriteVolumeFile(cmd.Context(), args[0], args[2], b)
			if err != nil {
				return cc.wrap(err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Wrote %s (%d bytes)\n", e.Path, e.Size)
			return err
		},
	}

	rm := &cobra.Command{
		Use: "rm NAME PATH", Short: "Remove a file or directory tree of a volume", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cc.wrap(cc.c.RemoveVolumeFile(cmd.Context(), args[0], args[1]))
		},
	}
	cmd.AddCommand(create, list, get, del, ls, cat, put, rm)
	return cmd
}

func mountsText(v wrenn.Volume) string {
	if len(v.Mounts) == 0 {
		return "-"
	}
	var parts []string
	for _, m := range v.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		parts = append(parts, m.CapsuleID+":"+m.Path+":"+mode)
	}
	return strings.Join(parts, ",")
}

// parseVolumeMounts parses --volume NAME:/path[:ro|:rw] flags.
func parseVolumeMounts(specs []string) ([]wrenn.VolumeMount, error) {
	out := make([]wrenn.VolumeMount, 0, len(specs))
	for _, s := range specs {
		parts := strings.Split(s, ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("--volume %q: want NAME:/path or NAME:/path:ro", s)
		}
		m := wrenn.VolumeMount{Name: parts[0], Path: parts[1]}
		if len(parts) == 3 {
			switch parts[2] {
			case "ro":
				m.ReadOnly = true
			case "rw":
			default:
				return nil, fmt.Errorf("--volume %q: the mode is ro or rw", s)
			}
		}
		out = append(out, m)
	}
	return out, nil
}
