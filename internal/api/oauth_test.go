package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// fakeGitHub is a local OAuth server: /authorize redirects back with a
// code for the identity chosen by the test, /token exchanges it, /user and
// /user/emails describe the identity.
type fakeGitHub struct {
	srv *httptest.Server

	mu     sync.Mutex
	next   ghUser // identity /authorize hands out
	codes  map[string]ghUser
	tokens map[string]ghUser
}

type ghUser struct {
	ID    int64
	Login string
	Name  string
	Email string
}

func newFakeGitHub(t *testing.T) *fakeGitHub {
	f := &fakeGitHub{codes: map[string]ghUser{}, tokens: map[string]ghUser{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("client_id") != "cid" {
			http.Error(w, "bad client", http.StatusBadRequest)
			return
		}
		code := auth.RandomToken("code_")
		f.mu.Lock()
		f.codes[code] = f.next
		f.mu.Unlock()
		u, _ := url.Parse(q.Get("redirect_uri"))
		v := url.Values{"code": {code}, "state": {q.Get("state")}}
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		f.mu.Lock()
		u, ok := f.codes[r.PostForm.Get("code")]
		delete(f.codes, r.PostForm.Get("code"))
		tok := auth.RandomToken("gho_")
		f.tokens[tok] = u
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok || r.PostForm.Get("client_secret") != "csecret" {
			_, _ = w.Write([]byte(`{"error":"bad_verification_code"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "bearer"})
	})
	who := func(r *http.Request) (ghUser, bool) {
		f.mu.Lock()
		defer f.mu.Unlock()
		u, ok := f.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		return u, ok
	}
	mux.HandleFunc("GET /api/user", func(w http.ResponseWriter, r *http.Request) {
		u, ok := who(r)
		if !ok {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"id": u.ID, "login": u.Login, "name": u.Name})
	})
	mux.HandleFunc("GET /api/user/emails", func(w http.ResponseWriter, r *http.Request) {
		u, ok := who(r)
		if !ok {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode([]map[string]any{
			{"email": "secondary@example.com", "primary": false, "verified": true},
			{"email": u.Email, "primary": true, "verified": true},
		})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeGitHub) as(u ghUser) {
	f.mu.Lock()
	f.next = u
	f.mu.Unlock()
}

// browser follows redirects within the API and GitHub, keeps cookies, and
// stops at the dashboard URL.
type browser struct {
	t      *testing.T
	client *http.Client
	jar    *cookiejar.Jar
}

const dashboard = "http://dashboard.invalid"

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, jar: jar, client: &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), dashboard) {
			return http.ErrUseLastResponse
		}
		return nil
	}}}
}

// visit returns where the flow ended (the dashboard redirect).
func (b *browser) visit(rawURL string) *url.URL {
	b.t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", rawURL, nil)
	res, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusFound {
		b.t.Fatalf("flow ended with %d at %s", res.StatusCode, res.Request.URL)
	}
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil {
		b.t.Fatal(err)
	}
	return loc
}

func (b *browser) cookie(base, name string) string {
	u, _ := url.Parse(base)
	for _, c := range b.jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

func tokenFrom(t *testing.T, loc *url.URL) string {
	t.Helper()
	if loc.Path != "/auth/callback" {
		t.Fatalf("flow ended at %s, want /auth/callback", loc)
	}
	v, err := url.ParseQuery(loc.Fragment)
	if err != nil || v.Get("token") == "" {
		t.Fatalf("no token in %s", loc)
	}
	return v.Get("token")
}

func TestGitHubOAuth(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		gh := newFakeGitHub(t)
		e := newEnv(t, st, func(c *api.Config, base string) {
			c.PublicURL = dashboard
			c.GitHub = auth.NewGitHubClient(auth.GitHubConfig{
				ClientID: "cid", ClientSecret: "csecret",
				AuthorizeURL: gh.srv.URL + "/authorize", TokenURL: gh.srv.URL + "/token",
				UserURL: gh.srv.URL + "/api/user", EmailsURL: gh.srv.URL + "/api/user/emails",
				RedirectURL: base + "/v1/auth/github/callback",
			}, http.DefaultClient)
		})
		ctx := context.Background()
		octo := ghUser{ID: 4242, Login: "octo", Name: "Octo Cat", Email: "octo@example.com"}

		t.Run("login without account never creates one", func(t *testing.T) {
			gh.as(octo)
			loc := newBrowser(t).visit(e.srv.URL + "/v1/auth/github?intent=login")
			if loc.Path != "/login" || loc.Query().Get("error") != "no_account" {
				t.Fatalf("ended at %s, want /login?error=no_account", loc)
			}
			if _, err := st.GetUserByEmail(ctx, octo.Email); err == nil {
				t.Fatal("login intent created an account")
			}
		})
		t.Run("signup creates the account and sets the one-time cookie", func(t *testing.T) {
			gh.as(octo)
			b := newBrowser(t)
			tok := tokenFrom(t, b.visit(e.srv.URL+"/v1/auth/github?intent=signup"))
			if b.cookie(e.srv.URL, "wrenn_oauth_new_signup") != "1" {
				t.Fatal("sign-up did not set wrenn_oauth_new_signup")
			}
			me := e.want(e.do("GET", "/v1/me", tok, nil), 200).json(t)
			if me["email"] != octo.Email || me["name"] != octo.Name || me["role"] != "owner" {
				t.Fatalf("me = %v", me)
			}
		})
		t.Run("login with the linked account", func(t *testing.T) {
			gh.as(octo)
			b := newBrowser(t)
			tok := tokenFrom(t, b.visit(e.srv.URL+"/v1/auth/github?intent=login"))
			if b.cookie(e.srv.URL, "wrenn_oauth_new_signup") != "" {
				t.Fatal("a login set the new-signup cookie")
			}
			e.want(e.do("GET", "/v1/me", tok, nil), 200)
		})
		t.Run("connect GitHub to an existing account", func(t *testing.T) {
			u := e.signup("pat@example.com")
			pat := ghUser{ID: 777, Login: "pat", Name: "Pat", Email: "pat-gh@example.com"}
			gh.as(pat)
			b := newBrowser(t)
			// The connect call is an authenticated API call; the browser
			// then follows the URL it returns with the state cookie.
			req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/auth/github/connect", nil)
			req.Header.Set("Authorization", "Bearer "+u.token)
			res, err := b.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var out struct{ URL string }
			_ = json.NewDecoder(res.Body).Decode(&out)
			_ = res.Body.Close()
			loc := b.visit(out.URL)
			if loc.Path != "/settings" {
				t.Fatalf("connect ended at %s", loc)
			}
			link, err := st.GetOAuthLink(ctx, "github", "777")
			if err != nil || link.UserID != u.id {
				t.Fatalf("link = %+v, %v", link, err)
			}
			// Now GitHub login reaches pat's account.
			tok := tokenFrom(t, newBrowser(t).visit(e.srv.URL+"/v1/auth/github?intent=login"))
			me := e.want(e.do("GET", "/v1/me", tok, nil), 200).json(t)
			if me["user_id"] != u.id {
				t.Fatalf("login after connect = %v", me)
			}
		})
		t.Run("tampered state is refused", func(t *testing.T) {
			gh.as(ghUser{ID: 999, Login: "mallory", Email: "mallory@example.com"})
			signer := auth.NewStateSigner(auth.DeriveKey(testKey, "state"))
			good := signer.Cookie("abc", auth.IntentLogin)
			cases := map[string]struct{ cookie, state string }{
				"intent swapped": {strings.Replace(good, ":login:", ":signup:", 1), "abc"},
				"state mismatch": {good, "xyz"},
				"foreign key":    {auth.NewStateSigner([]byte("other")).Cookie("abc", auth.IntentSignup), "abc"},
				"no cookie":      {"", "abc"},
				"garbage cookie": {"a:b", "abc"},
			}
			for name, c := range cases {
				b := newBrowser(t)
				u, _ := url.Parse(e.srv.URL + "/v1/auth/github")
				if c.cookie != "" {
					b.jar.SetCookies(u, []*http.Cookie{{Name: "wrenn_oauth_state", Value: c.cookie, Path: "/v1/auth/github"}})
				}
				loc := b.visit(e.srv.URL + "/v1/auth/github/callback?code=x&state=" + c.state)
				if loc.Query().Get("error") != "invalid_state" {
					t.Errorf("%s: ended at %s, want error=invalid_state", name, loc)
				}
			}
			if _, err := st.GetUserByEmail(ctx, "mallory@example.com"); err == nil {
				t.Fatal("a tampered state created an account")
			}
		})
	})
}

func TestStateSigner(t *testing.T) {
	s := auth.NewStateSigner([]byte("k"))
	c := s.Cookie("st", auth.IntentConnect)
	if got, err := s.Verify(c, "st"); err != nil || got != auth.IntentConnect {
		t.Fatalf("Verify = %q, %v", got, err)
	}
	if _, err := s.Verify(c, "other"); err == nil {
		t.Fatal("state mismatch accepted")
	}
}
