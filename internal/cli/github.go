package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/auth"
)

// githubFlags configure GitHub sign-in for `wrenn up` (the same flags as
// `wrenn server`); the endpoint overrides let a test point it at a fake
// GitHub.
type githubFlags struct {
	clientID, secretFile, authorizeURL, tokenURL, apiURL string
}

func (f *githubFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.clientID, "github-client-id", "", "GitHub OAuth app client id (enables GitHub sign-in)")
	fl.StringVar(&f.secretFile, "github-client-secret-file", "", "file holding the GitHub OAuth app client secret")
	fl.StringVar(&f.authorizeURL, "github-authorize-url", "", "GitHub authorize endpoint (default github.com)")
	fl.StringVar(&f.tokenURL, "github-token-url", "", "GitHub token endpoint (default github.com)")
	fl.StringVar(&f.apiURL, "github-api-url", "", "GitHub API base (default https://api.github.com)")
}

// config is the GitHub configuration (zero, i.e. disabled, without a client id).
func (f *githubFlags) config() (auth.GitHubConfig, error) {
	if f.clientID == "" {
		return auth.GitHubConfig{}, nil
	}
	if f.secretFile == "" {
		return auth.GitHubConfig{}, errors.New("--github-client-id needs --github-client-secret-file")
	}
	b, err := os.ReadFile(f.secretFile)
	if err != nil {
		return auth.GitHubConfig{}, fmt.Errorf("github client secret: %w", err)
	}
	c := auth.GitHubConfig{
		ClientID: f.clientID, ClientSecret: strings.TrimSpace(string(b)),
		AuthorizeURL: f.authorizeURL, TokenURL: f.tokenURL,
	}
	if api := strings.TrimSuffix(f.apiURL, "/"); api != "" {
		c.UserURL, c.EmailsURL = api+"/user", api+"/user/emails"
	}
	return c, nil
}
