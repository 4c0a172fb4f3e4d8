package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/fleet"
	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// newDevCmd returns `wrenn dev`: tools for developing and trying Wrenn.
func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Tools for developing and trying Wrenn"}
	cmd.AddCommand(newDevFleetCmd())
	return cmd
}

type devFleetFlags struct {
	agents, replicas, net                    int
	name, dir, postgres, envd                string
	s3Endpoint, s3Bucket, s3Prefix, s3Region string
	noCRIU                                   bool
	warmPool                                 string
}

func newDevFleetCmd() *cobra.Command {
	var f devFleetFlags
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Run a multi-host Wrenn on this machine: agents in their own network namespaces, control-plane replicas on PostgreSQL",
		Long: `Run a whole fleet on this machine until interrupted: --agents host agents, each
in its own network namespace with its own address, capsule subnet and
instance name, joined to the control plane by themselves over mutual TLS;
--replicas control-plane replicas on one PostgreSQL database (made for the
fleet and dropped at the end) behind a round-robin load balancer; with
--s3-endpoint, one S3 store for snapshots and templates ($WRENN_S3_ACCESS_KEY,
$WRENN_S3_SECRET_KEY). Prints the API URL and the admin key. Ctrl-C deletes
every capsule and removes everything it made. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDevFleet(cmd.Context(), f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.agents, "agents", 3, "host agents")
	fl.IntVar(&f.replicas, "replicas", 2, "control-plane replicas")
	fl.IntVar(&f.net, "net", 10, "second octet of the fleet's addresses: links 10.N.i.0/30, capsule subnets 10.N+1… (one per agent)")
	fl.StringVar(&f.name, "name", "fleet", "prefix of the fleet's host objects (1–6 letters and digits)")
	fl.StringVar(&f.dir, "dir", "", "working directory (default: a new temporary directory, removed at the end)")
	fl.StringVar(&f.postgres, "postgres", os.Getenv("WRENN_POSTGRES_DSN"), "PostgreSQL DSN of a role that may CREATE DATABASE ($WRENN_POSTGRES_DSN; scripts/postgres.sh prints one)")
	fl.StringVar(&f.envd, "envd-path", "", "static envd binary (default: envd next to this binary)")
	fl.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint host:port (plain HTTP) for snapshots and templates; empty: each host keeps its own")
	fl.StringVar(&f.s3Bucket, "s3-bucket", "wrenn", "S3 bucket (must exist)")
	fl.StringVar(&f.s3Prefix, "s3-prefix", "fleet/", "key prefix in the bucket")
	fl.StringVar(&f.s3Region, "s3-region", "us-east-1", "S3 region")
	fl.BoolVar(&f.noCRIU, "no-criu", false, "agents keep files only on pause to disk")
	fl.StringVar(&f.warmPool, "warm-pool", "minimal=auto", "the agents' --warm-pool (off, template=N or template=auto; base is not built in a fleet)")
	return cmd
}

func runDevFleet(ctx context.Context, f devFleetFlags, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("wrenn dev fleet must run as root (network namespaces, cgroups, mounts)")
	}
	if f.postgres == "" {
		return errors.New("--postgres (or WRENN_POSTGRES_DSN) is required: the replicas share one PostgreSQL")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if f.envd == "" {
		f.envd = filepath.Join(filepath.Dir(exe), "envd")
	}
	dir := f.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "wrenn-fleet-"); err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(dir) }()
	}
	o := fleet.Options{
		Dir: dir, Name: f.name, Agents: f.agents, Replicas: f.replicas, Net: f.net,
		Wrenn: exe, Envd: f.envd, PostgresDSN: f.postgres, Log: out, WarmPool: f.warmPool,
	}
	if f.noCRIU {
		o.AgentArgs = append(o.AgentArgs, "--no-criu")
	}
	if f.s3Endpoint != "" {
		o.S3 = &snapstore.S3Config{
			Endpoint: f.s3Endpoint, Bucket: f.s3Bucket, Prefix: f.s3Prefix, Region: f.s3Region, Insecure: true,
			AccessKey: os.Getenv("WRENN_S3_ACCESS_KEY"), SecretKey: os.Getenv("WRENN_S3_SECRET_KEY"),
		}
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	fl, err := fleet.Start(ctx, o)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "\nFleet %q is up.\n  API:        %s\n  Port proxy: %s\n  Admin key:  %s\n", f.name, fl.URL, fl.ProxyURL, fl.AdminKey)
	for _, r := range fl.Replicas {
		_, _ = fmt.Fprintf(out, "  replica %d:  %s\n", r.Index, r.URL)
	}
	for _, a := range fl.Agents {
		_, _ = fmt.Fprintf(out, "  host %d:     %s in netns %s (capsules %s), host id %s\n", a.Index, a.IP, a.Netns, a.Subnet, a.HostID)
	}
	_, _ = fmt.Fprintf(out, "Logs in %s. Ctrl-C stops the fleet and removes everything.\n", dir)
	<-ctx.Done()
	_, _ = fmt.Fprintln(out, "Stopping the fleet…")
	return fl.Stop()
}
