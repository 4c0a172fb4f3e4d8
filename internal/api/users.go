package api

import (
	"context"
	"errors"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/credstrip"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

func toUserJSON(u store.User) wrennapi.User {
	return wrennapi.User{ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, EmailVerified: u.EmailVerified, CreatedAt: u.CreatedAt}
}

func validEmail(s string) (string, error) {
	s = store.NormalizeEmail(s)
	if len(s) > 254 {
		return "", errorf(CodeInvalidArgument, "email is too long")
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || !strings.Contains(s, "@") {
		return "", errorf(CodeInvalidArgument, "email is not a valid address")
	}
	return s, nil
}

func validName(field, s string, maxLen int) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return "", errorf(CodeInvalidArgument, "%s is required", field)
	case !utf8.ValidString(s):
		return "", errorf(CodeInvalidArgument, "%s must be valid UTF-8", field)
	case utf8.RuneCountInString(s) > maxLen:
		return "", errorf(CodeInvalidArgument, "%s must be at most %d characters", field, maxLen)
	case strings.ContainsAny(s, "\x00\r\n"):
		return "", errorf(CodeInvalidArgument, "%s must not contain control characters", field)
	}
	return s, nil
}

func (a *API) signup(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Signup
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if a.cfg.DisableSignup {
		a.writeError(w, r, errorf(CodePermissionDenied, "sign-up is disabled on this server"))
		return
	}
	email, err := validEmail(req.Email)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if n := len(req.Password); n < auth.MinPasswordLen || n > auth.MaxPasswordLen {
		a.writeError(w, r, errorf(CodeInvalidArgument, "password must be %d to %d bytes long", auth.MinPasswordLen, auth.MaxPasswordLen))
		return
	}
	if strings.TrimSpace(req.Name) == "" {
		req.Name = strings.SplitN(email, "@", 2)[0]
	}
	name, err := validName("name", req.Name, 100)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	hash, err := auth.HashPassword(req.Password)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	u, team, err := a.createUserWithTeam(r.Context(), store.User{Email: email, Name: name, PasswordHash: hash})
	if errors.Is(err, store.ErrAlreadyExists) {
		a.writeError(w, r, errorf(CodeAlreadyExists, "an account with this email already exists"))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	// The account works at once; the mail only confirms the address.
	if err := a.sendVerification(r.Context(), u); err != nil {
		a.log.Warn("sign-up verification mail not sent", "user_id", u.ID, "err", err)
	}
	a.writeSession(w, r, http.StatusCreated, u, team)
}

// createUserWithTeam creates a user and their personal team (as owner).
func (a *API) createUserWithTeam(ctx context.Context, u store.User) (store.User, store.Team, error) {
	u, err := a.cfg.Store.CreateUser(ctx, u)
	if err != nil {
		return store.User{}, store.Team{}, err
	}
	team, err := a.cfg.Store.CreateTeam(ctx, store.Team{Name: u.Name + "'s team"})
	if err != nil {
		return store.User{}, store.Team{}, err
	}
	if _, err := a.cfg.Store.AddTeamMember(ctx, team.ID, u.ID, store.RoleOwner); err != nil {
		return store.User{}, store.Team{}, err
	}
	return u, team, nil
}

func (a *API) writeSession(w http.ResponseWriter, r *http.Request, status int, u store.User, team store.Team) {
	tok, exp, err := a.cfg.Sessions.Issue(u.ID, team.ID, u.PasswordHash)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, status, wrennapi.Session{Token: tok, ExpiresAt: exp.UTC(), User: toUserJSON(u), Team: toTeamJSON(team)})
}

func (a *API) login(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Login
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	bad := errorf(CodeUnauthenticated, "wrong email or password")
	if req.Email == "" || req.Password == "" || len(req.Password) > auth.MaxPasswordLen {
		a.writeError(w, r, bad)
		return
	}
	// Failed attempts are limited per account and per client address,
	// whether or not the account exists (no hint either way).
	acct, ip := accountKey(req.Email), clientIP(r)
	if wait := max(a.limits.loginAccount.wait(acct), a.limits.loginIP.wait(ip)); wait > 0 {
		a.tooMany(w, r, wait, "failed logins")
		return
	}
	failed := func() {
		a.limits.loginAccount.spend(acct)
		a.limits.loginIP.spend(ip)
		a.writeError(w, r, bad)
	}
	u, err := a.cfg.Store.GetUserByEmail(r.Context(), req.Email)
	if errors.Is(err, store.ErrNotFound) {
		// Spend the same time as a real check so timing does not reveal
		// which emails exist.
		_ = auth.CheckPassword(req.Password, dummyHash)
		failed()
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if auth.CheckPassword(req.Password, u.PasswordHash) != nil {
		failed()
		return
	}
	if u.Status != store.UserActive || u.DeletedAt != nil {
		a.writeError(w, r, errorf(CodeUnauthenticated, "the account is deactivated"))
		return
	}
	team, err := a.defaultTeam(r.Context(), u.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.writeSession(w, r, http.StatusOK, u, team)
}

var dummyHash, _ = auth.HashPassword("wrenn-timing-equaliser")

// defaultTeam is the team a fresh session starts in: the first the user
// owns, else the first they belong to (zero Team when none).
func (a *API) defaultTeam(ctx context.Context, userID string) (store.Team, error) {
	ms, err := a.cfg.Store.ListTeamsForUser(ctx, userID)
	if err != nil {
		return store.Team{}, err
	}
	for _, m := range ms {
		if m.Role == store.RoleOwner && !m.Team.IsPlatform {
			return m.Team, nil
		}
	}
	if len(ms) > 0 {
		return ms[0].Team, nil
	}
	return store.Team{}, nil
}

func (a *API) me(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	out := wrennapi.Me{
		UserID: p.UserID, Email: p.User.Email, Name: p.User.Name, TeamID: p.TeamID,
		Role: wrennapi.MeRole(p.Role), IsAdmin: p.IsAdmin, Auth: wrennapi.MeAuth(p.Via), APIKeyID: p.KeyID,
	}
	if p.TeamID != "" && p.Role != "" {
		if t, err := a.cfg.Store.GetTeam(r.Context(), p.TeamID); err == nil {
			tj := toTeamJSON(t)
			out.Team = &tj
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// ---- GitHub OAuth ----

// Every cookie the API sets is named credstrip.CookiePrefix+…, so the port
// proxies strip it before a request reaches capsule code.
const (
	stateCookie     = credstrip.CookiePrefix + "oauth_state"
	newSignupCookie = credstrip.CookiePrefix + "oauth_new_signup"
	providerGitHub  = "github"
)

func (a *API) setStateCookie(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: stateCookie, Value: value, Path: "/v1/auth/github", MaxAge: maxAge,
		HttpOnly: true, Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
}

func (a *API) githubStart(w http.ResponseWriter, r *http.Request) {
	if a.cfg.GitHub == nil {
		a.writeError(w, r, errorf(CodeNotImplemented, "GitHub sign-in is not configured on this server"))
		return
	}
	intent := r.URL.Query().Get("intent")
	if intent == "" {
		intent = auth.IntentLogin
	}
	if intent != auth.IntentLogin && intent != auth.IntentSignup {
		a.writeError(w, r, errorf(CodeInvalidArgument, "intent must be login or signup (use POST /v1/auth/github/connect to connect an account)"))
		return
	}
	state := auth.RandomToken("")
	a.setStateCookie(w, a.cfg.States.Cookie(state, intent), 600)
	http.Redirect(w, r, a.cfg.GitHub.Config().AuthCodeURL(state), http.StatusFound)
}

// githubConnect starts linking GitHub to the calling user. The user ID
// rides in the state, which the cookie's HMAC covers.
func (a *API) githubConnect(w http.ResponseWriter, r *http.Request) {
	if a.cfg.GitHub == nil {
		a.writeError(w, r, errorf(CodeNotImplemented, "GitHub sign-in is not configured on this server"))
		return
	}
	p := caller(r.Context())
	if p.UserID == "" || p.KeyID != "" {
		a.writeError(w, r, errorf(CodePermissionDenied, "connecting GitHub needs a logged-in user session"))
		return
	}
	state := auth.RandomToken("") + "." + p.UserID
	a.setStateCookie(w, a.cfg.States.Cookie(state, auth.IntentConnect), 600)
	writeJSON(w, http.StatusOK, wrennapi.URL{URL: a.cfg.GitHub.Config().AuthCodeURL(state)})
}

func (a *API) oauthFail(w http.ResponseWriter, r *http.Request, code string) {
	a.setStateCookie(w, "", -1)
	q := url.Values{}
	q.Set("error", code)
	http.Redirect(w, r, a.cfg.PublicURL+"/login?"+q.Encode(), http.StatusFound)
}

func (a *API) githubCallback(w http.ResponseWriter, r *http.Request) {
	if a.cfg.GitHub == nil {
		a.writeError(w, r, errorf(CodeNotImplemented, "GitHub sign-in is not configured on this server"))
		return
	}
	q := r.URL.Query()
	c, err := r.Cookie(stateCookie)
	if err != nil {
		a.oauthFail(w, r, "invalid_state")
		return
	}
	state := q.Get("state")
	intent, err := a.cfg.States.Verify(c.Value, state)
	if err != nil || (intent != auth.IntentLogin && intent != auth.IntentSignup && intent != auth.IntentConnect) {
		a.oauthFail(w, r, "invalid_state")
		return
	}
	a.setStateCookie(w, "", -1)
	if q.Get("error") != "" || q.Get("code") == "" {
		a.oauthFail(w, r, "access_denied")
		return
	}
	ctx := r.Context()
	tok, err := a.cfg.GitHub.Exchange(ctx, q.Get("code"))
	if err != nil {
		a.log.WarnContext(ctx, "github exchange failed", "request_id", requestID(ctx), "err", err)
		a.oauthFail(w, r, "github_unavailable")
		return
	}
	gh, err := a.cfg.GitHub.User(ctx, tok)
	if err != nil {
		a.log.WarnContext(ctx, "github user failed", "request_id", requestID(ctx), "err", err)
		a.oauthFail(w, r, "github_unavailable")
		return
	}
	link, err := a.cfg.Store.GetOAuthLink(ctx, providerGitHub, gh.ID)
	linked := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.writeError(w, r, err)
		return
	}

	if intent == auth.IntentConnect {
		_, userID, _ := strings.Cut(state, ".")
		if linked {
			if link.UserID != userID {
				a.oauthFail(w, r, "already_linked")
				return
			}
		} else if _, err := a.cfg.Store.LinkOAuth(ctx, store.OAuthLink{Provider: providerGitHub, ProviderUserID: gh.ID, UserID: userID, Email: gh.Email}); err != nil {
			if errors.Is(err, store.ErrAlreadyExists) || errors.Is(err, store.ErrConflict) {
				a.oauthFail(w, r, "already_linked")
				return
			}
			a.writeError(w, r, err)
			return
		}
		http.Redirect(w, r, a.cfg.PublicURL+"/settings?connected=github", http.StatusFound)
		return
	}

	var u store.User
	var team store.Team
	switch {
	case linked:
		u, err = a.activeUser(ctx, link.UserID)
		if err != nil {
			a.oauthFail(w, r, "account_disabled")
			return
		}
		team, err = a.defaultTeam(ctx, u.ID)
	case intent == auth.IntentLogin:
		// Login never creates an account.
		a.oauthFail(w, r, "no_account")
		return
	default: // signup
		if gh.Email == "" {
			a.oauthFail(w, r, "no_verified_email")
			return
		}
		if a.cfg.DisableSignup {
			a.oauthFail(w, r, "signup_disabled")
			return
		}
		u, team, err = a.createUserWithTeam(ctx, store.User{Email: gh.Email, Name: gh.Name, EmailVerified: true})
		if errors.Is(err, store.ErrAlreadyExists) {
			a.oauthFail(w, r, "email_taken")
			return
		}
		if err == nil {
			_, err = a.cfg.Store.LinkOAuth(ctx, store.OAuthLink{Provider: providerGitHub, ProviderUserID: gh.ID, UserID: u.ID, Email: gh.Email})
		}
		if err == nil {
			http.SetCookie(w, &http.Cookie{
				Name: newSignupCookie, Value: "1", Path: "/", MaxAge: 300,
				Secure: a.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
			})
		}
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	jwt, _, err := a.cfg.Sessions.Issue(u.ID, team.ID, u.PasswordHash)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	// The token travels in the fragment, which browsers never send to servers.
	http.Redirect(w, r, a.cfg.PublicURL+"/auth/callback#token="+url.QueryEscape(jwt), http.StatusFound)
}
