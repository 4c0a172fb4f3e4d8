package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// newLoginCmd returns `wrenn login`.
func newLoginCmd() *cobra.Command {
	var config, url, key, keyFile string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Save the URL and API key the client commands use",
		Long: `Check an API key against a Wrenn (GET /v1/me) and save the URL and key in
the client config (~/.config/wrenn/config, mode 0600). The key comes from
--key, --key-file, $WRENN_API_KEY or standard input, in that order.

` + "`wrenn up`" + ` prints its admin key on first start and keeps it in
$WRENN_HOME/admin.key (/var/lib/wrenn/admin.key by default).`,
		Example: `  wrenn login --url http://127.0.0.1:9725 --key-file /var/lib/wrenn/admin.key
  echo "$KEY" | wrenn login --url https://wrenn.example.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if key == "" && keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return fmt.Errorf("--key-file: %w", err)
				}
				key = strings.TrimSpace(string(b))
			}
			if key == "" {
				key = os.Getenv("WRENN_API_KEY")
			}
			if key == "" {
				if isTerminal(cmd.InOrStdin()) {
					fmt.Fprint(cmd.ErrOrStderr(), "API key: ")
				}
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && line == "" {
					return errors.New("no API key: pass --key or --key-file, or type it on standard input")
				}
				key = strings.TrimSpace(line)
			}
			if url == "" {
				url = DefaultURL
			}
			return runLogin(cmd.Context(), cmd, config, url, key)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&config, "config", "", "client config file (default $WRENN_CONFIG, else ~/.config/wrenn/config)")
	fl.StringVar(&url, "url", DefaultURL, "Wrenn API URL")
	fl.StringVar(&key, "key", "", "API key (wrn_…)")
	fl.StringVar(&keyFile, "key-file", "", "file holding the API key, e.g. /var/lib/wrenn/admin.key")
	return cmd
}

func runLogin(ctx context.Context, cmd *cobra.Command, config, url, key string) error {
	c, err := wrenn.New(url, key, wrenn.WithUserAgent("wrenn-cli/"+wrenn.Version))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	me, err := c.Me(ctx)
	if err != nil {
		var ae *wrenn.Error
		if errors.As(err, &ae) && ae.Code == wrenn.CodeUnauthenticated {
			return fmt.Errorf("%s refused the key: %s", url, ae.Message)
		}
		return friendly(err, url)
	}
	path, err := configPath(config)
	if err != nil {
		return err
	}
	if err := saveConfig(path, clientConfig{URL: c.BaseURL(), APIKey: key}); err != nil {
		return err
	}
	who := me.Email
	if who == "" {
		who = "API key " + me.APIKeyID
	}
	team := me.TeamID
	if me.Team != nil && me.Team.Name != "" {
		team = me.Team.Name
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "Logged in to %s as %s (team %s). Saved in %s.\n", c.BaseURL(), who, team, path)
	return err
}
