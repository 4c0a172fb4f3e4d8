package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// DefaultURL is where `wrenn up` listens unless told otherwise.
const DefaultURL = "http://127.0.0.1:9725"

// clientConfig is what `wrenn login` stores (JSON, mode 0600).
type clientConfig struct {
	URL    string `json:"url"`
	APIKey string `json:"api_key"`
}

// clientFlags are the connection flags every client command group has.
type clientFlags struct {
	config string
	url    string
	apiKey string
}

func addClientFlags(cmd *cobra.Command, f *clientFlags) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.config, "config", "", "client config file (default $WRENN_CONFIG, else ~/.config/wrenn/config)")
	pf.StringVar(&f.url, "url", "", "Wrenn API URL (overrides the config and $WRENN_URL)")
	pf.StringVar(&f.apiKey, "api-key", "", "API key (overrides the config and $WRENN_API_KEY)")
}

// configPath resolves the client config file.
func configPath(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if p := os.Getenv("WRENN_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a config directory (set $WRENN_CONFIG or --config): %w", err)
	}
	return filepath.Join(dir, "wrenn", "config"), nil
}

func loadConfig(path string) (clientConfig, error) {
	var c clientConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s is not a valid wrenn config: %w", path, err)
	}
	return c, nil
}

func saveConfig(path string, c clientConfig) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// resolve returns the URL and key to use: flags, then environment, then
// the config file.
func (f *clientFlags) resolve() (clientConfig, error) {
	path, err := configPath(f.config)
	if err != nil {
		return clientConfig{}, err
	}
	c, err := loadConfig(path)
	if err != nil {
		return c, err
	}
	if v := os.Getenv("WRENN_URL"); v != "" {
		c.URL = v
	}
	if v := os.Getenv("WRENN_API_KEY"); v != "" {
		c.APIKey = v
	}
	if f.url != "" {
		c.URL = f.url
	}
	if f.apiKey != "" {
		c.APIKey = f.apiKey
	}
	if c.APIKey == "" {
		return c, errors.New("not logged in: run `wrenn login --url " + DefaultURL + " --key-file /var/lib/wrenn/admin.key` " +
			"(or set $WRENN_API_KEY)")
	}
	if c.URL == "" {
		c.URL = DefaultURL
	}
	return c, nil
}

// client builds an SDK client from the flags, environment and config.
func (f *clientFlags) client() (*wrenn.Client, error) {
	c, err := f.resolve()
	if err != nil {
		return nil, err
	}
	return wrenn.New(c.URL, c.APIKey, wrenn.WithUserAgent("wrenn-cli/"+wrenn.Version))
}

// friendly turns SDK errors into messages that say what to do.
func friendly(err error, baseURL string) error {
	if err == nil {
		return nil
	}
	var ce *wrenn.ConnectionError
	var ae *wrenn.Error
	switch {
	case errors.As(err, &ce):
		return fmt.Errorf("no Wrenn at %s: is `wrenn up` running? (%w)", ce.URL, ce.Err)
	case errors.As(err, &ae) && ae.Code == wrenn.CodeUnauthenticated:
		return fmt.Errorf("%s at %s: run `wrenn login`", ae.Message, baseURL)
	case errors.As(err, &ae) && ae.Code == wrenn.CodeNotFound && strings.Contains(ae.Message, `template "base"`):
		return fmt.Errorf("%s: it may still be building in `wrenn up`; use --template minimal meanwhile", ae.Message)
	case errors.As(err, &ae) && ae.Code != "":
		return fmt.Errorf("%s (%s)", ae.Message, ae.Code)
	}
	return err
}

// exitError makes the process exit with Code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// ExitCode is read by Main.
func (e *exitError) ExitCode() int { return e.code }

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal.
func isTerminal(v any) bool {
	f, ok := v.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd())) //nolint:gosec // file descriptors fit in int
}
