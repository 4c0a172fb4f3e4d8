package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// GitHubConfig points at GitHub's OAuth endpoints. The URLs are fields so a
// test can run the flow against a local server.
type GitHubConfig struct {
	ClientID     string
	ClientSecret string
	// AuthorizeURL default https://github.com/login/oauth/authorize.
	AuthorizeURL string
	// TokenURL default https://github.com/login/oauth/access_token.
	TokenURL string
	// UserURL default https://api.github.com/user.
	UserURL string
	// EmailsURL default https://api.github.com/user/emails.
	EmailsURL string
	// RedirectURL is our callback, e.g. https://wrenn.example/v1/auth/github/callback.
	RedirectURL string
}

// Enabled reports whether GitHub sign-in is configured.
func (c GitHubConfig) Enabled() bool { return c.ClientID != "" && c.ClientSecret != "" }

// WithDefaults fills the public GitHub endpoints.
func (c GitHubConfig) WithDefaults() GitHubConfig {
	if c.AuthorizeURL == "" {
		c.AuthorizeURL = "https://github.com/login/oauth/authorize"
	}
	if c.TokenURL == "" {
		c.TokenURL = "https://github.com/login/oauth/access_token"
	}
	if c.UserURL == "" {
		c.UserURL = "https://api.github.com/user"
	}
	if c.EmailsURL == "" {
		c.EmailsURL = "https://api.github.com/user/emails"
	}
	return c
}

// AuthCodeURL is where the browser goes to approve the app.
func (c GitHubConfig) AuthCodeURL(state string) string {
	q := url.Values{}
	q.Set("client_id", c.ClientID)
	q.Set("redirect_uri", c.RedirectURL)
	q.Set("scope", "read:user user:email")
	q.Set("state", state)
	sep := "?"
	if strings.Contains(c.AuthorizeURL, "?") {
		sep = "&"
	}
	return c.AuthorizeURL + sep + q.Encode()
}

// GitHubUser is the identity GitHub vouches for.
type GitHubUser struct {
	ID    string
	Login string
	Name  string
	Email string // primary verified email, "" if none
}

// GitHubClient exchanges codes and reads the user.
type GitHubClient struct {
	cfg  GitHubConfig
	http *http.Client
}

// NewGitHubClient returns a client using hc for all calls.
func NewGitHubClient(cfg GitHubConfig, hc *http.Client) *GitHubClient {
	return &GitHubClient{cfg: cfg.WithDefaults(), http: hc}
}

// Config returns the effective configuration.
func (g *GitHubClient) Config() GitHubConfig { return g.cfg }

// Exchange trades an authorization code for an access token.
func (g *GitHubClient) Exchange(ctx context.Context, code string) (string, error) {
	form := url.Values{}
	form.Set("client_id", g.cfg.ClientID)
	form.Set("client_secret", g.cfg.ClientSecret)
	form.Set("code", code)
	form.Set("redirect_uri", g.cfg.RedirectURL)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("github token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := g.do(req, &out); err != nil {
		return "", fmt.Errorf("github token exchange: %w", err)
	}
	if out.Error != "" || out.AccessToken == "" {
		return "", fmt.Errorf("github token exchange: %s %s", out.Error, out.Description)
	}
	return out.AccessToken, nil
}

// User reads the authenticated user and their primary verified email.
func (g *GitHubClient) User(ctx context.Context, token string) (GitHubUser, error) {
	var u struct {
		ID    int64  `json:"id"`
		Login string `json:"login"`
		Name  string `json:"name"`
		Email string `json:"email"`
	}
	if err := g.get(ctx, g.cfg.UserURL, token, &u); err != nil {
		return GitHubUser{}, fmt.Errorf("github user: %w", err)
	}
	if u.ID == 0 {
		return GitHubUser{}, errors.New("github user: no id")
	}
	var emails []struct {
		Email    string `json:"email"`
		Primary  bool   `json:"primary"`
		Verified bool   `json:"verified"`
	}
	if err := g.get(ctx, g.cfg.EmailsURL, token, &emails); err != nil {
		return GitHubUser{}, fmt.Errorf("github emails: %w", err)
	}
	out := GitHubUser{ID: strconv.FormatInt(u.ID, 10), Login: u.Login, Name: u.Name}
	for _, e := range emails {
		if e.Primary && e.Verified {
			out.Email = e.Email
		}
	}
	if out.Name == "" {
		out.Name = u.Login
	}
	return out, nil
}

func (g *GitHubClient) get(ctx context.Context, u, token string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/vnd.github+json")
	return g.do(req, v)
}

func (g *GitHubClient) do(req *http.Request, v any) error {
	resp, err := g.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d", req.Method, req.URL.Redacted(), resp.StatusCode)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", req.URL.Redacted(), err)
	}
	return nil
}

// OAuth intents.
const (
	IntentLogin   = "login"
	IntentSignup  = "signup"
	IntentConnect = "connect"
)

// StateSigner signs OAuth state cookies.
type StateSigner struct{ key []byte }

// NewStateSigner returns a signer keyed by key.
func NewStateSigner(key []byte) *StateSigner { return &StateSigner{key: key} }

func (s *StateSigner) mac(state, intent string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(state + ":" + intent))
	return m.Sum(nil)
}

// Cookie returns the cookie value for state and intent:
// state:intent:base64(hmac(state + ":" + intent)).
func (s *StateSigner) Cookie(state, intent string) string {
	return state + ":" + intent + ":" + base64.RawURLEncoding.EncodeToString(s.mac(state, intent))
}

// Verify checks that cookie was signed by us for exactly the state the
// provider returned, and returns the intent it was signed with.
func (s *StateSigner) Verify(cookie, state string) (intent string, err error) {
	parts := strings.Split(cookie, ":")
	if len(parts) != 3 || state == "" {
		return "", ErrMalformed
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", ErrMalformed
	}
	if !hmac.Equal(sig, s.mac(parts[0], parts[1])) || !hmac.Equal([]byte(parts[0]), []byte(state)) {
		return "", ErrInvalidCredentials
	}
	return parts[1], nil
}
