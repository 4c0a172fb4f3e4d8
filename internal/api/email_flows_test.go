package api_test

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// mailLog is a slog.Handler that keeps what the log mailer (the default
// Mailer) writes: recipient and link of every message.
type mailLog struct {
	mu   *sync.Mutex
	sent *[]sentMail
}

type sentMail struct{ to, subject, link string }

func newMailLog() mailLog { return mailLog{mu: &sync.Mutex{}, sent: &[]sentMail{}} }

func (mailLog) Enabled(context.Context, slog.Level) bool { return true }

func (m mailLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, "email ") {
		return nil
	}
	var s sentMail
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "to":
			s.to = a.Value.String()
		case "subject":
			s.subject = a.Value.String()
		case "link":
			s.link = a.Value.String()
		}
		return true
	})
	m.mu.Lock()
	*m.sent = append(*m.sent, s)
	m.mu.Unlock()
	return nil
}

func (m mailLog) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m mailLog) WithGroup(string) slog.Handler      { return m }

func (m mailLog) all() []sentMail {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sentMail(nil), *m.sent...)
}

// lastToken returns the token of the newest mail to addr, checking the
// link points at page on the public URL.
func (m mailLog) lastToken(t *testing.T, addr, page string) string {
	t.Helper()
	all := m.all()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].to != addr {
			continue
		}
		u, err := url.Parse(all[i].link)
		if err != nil || u.Scheme != "https" || u.Host != "wrenn.example" || u.Path != page {
			t.Fatalf("link %q: want https://wrenn.example%s?token=…", all[i].link, page)
		}
		return u.Query().Get("token")
	}
	t.Fatalf("no mail to %s in %v", addr, all)
	return ""
}

func TestEmailVerificationAndPasswordReset(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		mails := newMailLog()
		e := newEnv(t, st, func(c *api.Config, _ string) {
			c.Logger = slog.New(mails)
			c.PublicURL = "https://wrenn.example"
		})
		u := e.signup("ada@example.com")
		// GET /v1/me does not report email_verified; read the store.
		verified := func() bool {
			got, err := st.GetUser(context.Background(), u.id)
			if err != nil {
				t.Fatal(err)
			}
			return got.EmailVerified
		}

		// Verification.
		e.want(e.do("POST", "/v1/auth/verify/resend", "", nil), 401)
		e.want(e.do("POST", "/v1/auth/verify/resend", u.token, nil), 202)
		first := mails.lastToken(t, u.email, "/verify-email")
		e.want(e.do("POST", "/v1/auth/verify/resend", u.token, nil), 202)
		tok := mails.lastToken(t, u.email, "/verify-email")
		if tok == first {
			t.Fatal("resend reused the token")
		}
		if verified() {
			t.Fatal("verified before the link was used")
		}
		// Only the newest link works.
		e.want(e.do("POST", "/v1/auth/verify", "", map[string]string{"token": first}), 400)
		e.want(e.do("POST", "/v1/auth/verify", "", map[string]string{"token": tok}), 200)
		if !verified() {
			t.Fatal("not verified after the link was used")
		}
		e.want(e.do("POST", "/v1/auth/verify", "", map[string]string{"token": tok}), 400)
		if r := e.want(e.do("POST", "/v1/auth/verify/resend", u.token, nil), 200).json(t); r["email_verified"] != true {
			t.Fatalf("resend after verification = %v", r)
		}

		// Password reset: no hint whether the address has an account.
		n := len(mails.all())
		for _, addr := range []string{"nobody@example.com", "ADA@example.com"} {
			r := e.want(e.do("POST", "/v1/auth/password/forgot", "", map[string]string{"email": addr}), 202)
			if !strings.Contains(string(r.body), "if an account uses this address") {
				t.Fatalf("forgot(%s) = %s", addr, r.body)
			}
		}
		if got := len(mails.all()) - n; got != 1 {
			t.Fatalf("%d mails sent, want 1 (only to the real account)", got)
		}
		old := mails.lastToken(t, u.email, "/reset-password")
		e.want(e.do("POST", "/v1/auth/password/forgot", "", map[string]string{"email": u.email}), 202)
		reset := mails.lastToken(t, u.email, "/reset-password")
		for _, tc := range []struct {
			name string
			body any
			want int
		}{
			{"old link", map[string]string{"token": old, "password": "new password 123"}, 400},
			{"short password", map[string]string{"token": reset, "password": "short"}, 400},
			{"verify token", map[string]string{"token": tok, "password": "new password 123"}, 400},
			{"garbage", map[string]string{"token": "wpr_" + strings.Repeat("z", 500), "password": "new password 123"}, 400},
			{"no token", map[string]string{"password": "new password 123"}, 400},
			{"unknown field", `{"token":"x","password":"y","admin":true}`, 400},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e.want(e.do("POST", "/v1/auth/password/reset", "", tc.body), tc.want)
			})
		}
		e.want(e.do("GET", "/v1/me", u.token, nil), 200)
		e.want(e.do("POST", "/v1/auth/password/reset", "", map[string]string{"token": reset, "password": "new password 123"}), 204)
		e.want(e.do("POST", "/v1/auth/password/reset", "", map[string]string{"token": reset, "password": "another one 456"}), 400)
		// The reset ends every session issued under the old password.
		if r := e.want(e.do("GET", "/v1/me", u.token, nil), 401); !strings.Contains(r.str(t, "message"), "password was changed") {
			t.Errorf("old session after a reset: %s", r.body)
		}
		e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": u.email, "password": "correct horse battery"}), 401)
		fresh := e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": u.email, "password": "new password 123"}), 200).str(t, "token")
		e.want(e.do("GET", "/v1/me", fresh, nil), 200)

		// Expired tokens fail; deactivated accounts get no mail.
		ctx := context.Background()
		expired := auth.RandomToken("wpr_")
		if err := st.CreateUserToken(ctx, store.UserToken{
			TokenHash: auth.HashToken(expired), UserID: u.id, Kind: store.TokenPasswordReset,
			CreatedAt: store.Now().Add(-2 * time.Hour), ExpiresAt: store.Now().Add(-time.Hour),
		}); err != nil {
			t.Fatal(err)
		}
		e.want(e.do("POST", "/v1/auth/password/reset", "", map[string]string{"token": expired, "password": "new password 789"}), 400)
		if err := st.SetUserActive(ctx, u.id, false); err != nil {
			t.Fatal(err)
		}
		n = len(mails.all())
		e.want(e.do("POST", "/v1/auth/password/forgot", "", map[string]string{"email": u.email}), 202)
		if len(mails.all()) != n {
			t.Fatal("a deactivated account got a reset mail")
		}
		e.want(e.do("POST", "/v1/auth/password/forgot", "", map[string]string{"email": "not an address"}), 400)
	})
}
