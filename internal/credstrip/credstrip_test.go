package credstrip_test

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/credstrip"
)

// realTokens are tokens minted by the code that mints them in production.
func realTokens(t *testing.T) map[string]string {
	t.Helper()
	s, err := auth.NewSessions([]byte(strings.Repeat("k", 32)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jwtTok, _, err := s.Issue("us-1", "tm-1", "")
	if err != nil {
		t.Fatal(err)
	}
	// An expired session token is still a credential to keep from capsules.
	s.SetClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })
	expired, _, _ := s.Issue("us-1", "tm-1", "")
	return map[string]string{
		"api key":         auth.GenerateAPIKey().Plain,
		"session jwt":     jwtTok,
		"expired session": expired,
		"host credential": auth.HostCredential([]byte(strings.Repeat("h", 32)), "ho-1"),
		"host token":      auth.RandomToken("wrt_"),
		"access token":    auth.RandomToken("wrc_"),
		"invite":          auth.RandomToken("wri_"),
	}
}

func TestIsWrennToken(t *testing.T) {
	for name, tok := range realTokens(t) {
		if !credstrip.IsWrennToken(tok) {
			t.Errorf("%s %q not recognised", name, tok)
		}
	}
	foreign, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Issuer: "https://accounts.example", Subject: "x"}).SignedString([]byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"", "abc", foreign, "ghp_123", "a.b.c", "wrn_", "Zm9vOmJhcg=="} {
		if credstrip.IsWrennToken(s) {
			t.Errorf("%q taken for a Wrenn token", s)
		}
	}
}

func TestHeaderStripsEveryWrennCredential(t *testing.T) {
	toks := realTokens(t)
	h := http.Header{}
	h.Set("X-API-Key", toks["api key"])
	h.Set("X-Wrenn-Access-Token", toks["access token"])
	h.Set("X-Wrenn-Host-Secret", toks["host credential"])
	h.Set("x-wrenn-anything", "1")
	h.Add("Authorization", "Bearer "+toks["api key"])
	h.Add("Authorization", "bearer "+toks["session jwt"])
	h.Add("Authorization", "Basic dXNlcjo=")
	h.Add("Authorization", "Bearer app-own-token")
	h.Add("Cookie", "wrenn_oauth_state=abc; app=1; WRENN_session="+toks["session jwt"])
	h.Add("Cookie", "wrenn_oauth_new_signup=1;theme=dark")
	h.Set("X-App", "kept")
	credstrip.Header(h)
	want := http.Header{
		"Authorization": {"Basic dXNlcjo=", "Bearer app-own-token"},
		"Cookie":        {"app=1; theme=dark"},
		"X-App":         {"kept"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("after strip:\n got %v\nwant %v", h, want)
	}

	only := http.Header{"Authorization": {"Bearer " + toks["expired session"]}, "Cookie": {"wrenn_oauth_state=x"}}
	credstrip.Header(only)
	if len(only) != 0 {
		t.Fatalf("headers holding only credentials must go: %v", only)
	}
}

func TestQuery(t *testing.T) {
	toks := realTokens(t)
	tests := []struct{ in, want string }{
		{"", ""},
		{"a=1&b=2", "a=1&b=2"},
		{"a=%2F&wrenn_access_token=x&b=c+d", "a=%2F&b=c+d"},
		{"WRENN_ACCESS_TOKEN=x", ""},
		{"token=" + toks["api key"] + "&x=1", "x=1"},
		{"token=" + url.QueryEscape(toks["session jwt"]), ""},
		{"token=jupyter-own-token", "token=jupyter-own-token"},
		{"key=" + toks["host credential"] + "&z", "z"},
		{"bad=%zz&wrenn_access_token=1", "bad=%zz"},
	}
	for _, tt := range tests {
		if got := credstrip.Query(tt.in); got != tt.want {
			t.Errorf("Query(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzQuery(f *testing.F) {
	f.Add("a=1&wrenn_access_token=2")
	f.Add("token=wrn_x&&=")
	f.Fuzz(func(t *testing.T, q string) {
		out := credstrip.Query(q)
		if len(out) > len(q) {
			t.Fatalf("Query grew %q to %q", q, out)
		}
		vals, _ := url.ParseQuery(out)
		if _, ok := vals[credstrip.AccessTokenParam]; ok {
			t.Fatalf("access token left in %q", out)
		}
		for _, vs := range vals {
			for _, v := range vs {
				if credstrip.IsWrennToken(v) {
					t.Fatalf("Wrenn token left in %q", out)
				}
			}
		}
	})
}
