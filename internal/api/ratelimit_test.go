package api_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// TestRateLimits: failed logins are limited per account and per client
// address (429 with Retry-After, even for the right password, and for
// unknown accounts alike); successes cost nothing; reset mails are limited
// per address asked for.
func TestRateLimits(t *testing.T) {
	e := newEnv(t, apitest.SQLite(t), func(c *api.Config, _ string) {
		c.RateLimits = api.RateLimits{
			LoginFailuresPerAccount: api.Limit{Burst: 3, Every: time.Hour},
			LoginFailuresPerIP:      api.Limit{Burst: 8, Every: time.Hour},
			ResetMailsPerAddress:    api.Limit{Burst: 2, Every: time.Hour},
		}
	})
	alice := e.signup("alice@example.com")
	e.signup("bob@example.com")
	login := func(email, pw string) resp {
		return e.do("POST", "/v1/auth/login", "", map[string]string{"email": email, "password": pw})
	}
	// Successful logins are free.
	for range 5 {
		e.want(login(alice.email, "correct horse battery"), 200)
	}
	for i := range 3 {
		if r := login(alice.email, "wrong password "+strconv.Itoa(i)); r.status != 401 {
			t.Fatalf("failure %d: status %d, want 401: %s", i, r.status, r.body)
		}
	}
	r := e.want(login("ALICE@example.com", "correct horse battery"), 429)
	if r.str(t, "code") != "rate_limited" {
		t.Errorf("429 body: %s", r.body)
	}
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 3600 {
		t.Errorf("Retry-After = %q, want whole seconds in [1, 3600]", r.header.Get("Retry-After"))
	}
	// Another account from the same address still logs in.
	e.want(login("bob@example.com", "correct horse battery"), 200)

	// Unknown accounts spend the same budgets (no hint which exist); the
	// per-address budget (8) runs out across accounts: 3 spent on alice.
	for i := range 5 {
		e.want(login("nobody"+strconv.Itoa(i)+"@example.com", "whatever pw"), 401)
	}
	e.want(login("bob@example.com", "correct horse battery"), 429)

	// Reset mails: per address asked for, whether or not it has an account.
	forgot := func(email string) resp {
		return e.do("POST", "/v1/auth/password/forgot", "", map[string]string{"email": email})
	}
	for _, addr := range []string{"alice@example.com", "ghost@example.com"} {
		e.want(forgot(addr), 202)
		e.want(forgot(addr), 202)
		e.want(forgot(addr), 429)
	}
	e.want(forgot("bob@example.com"), 202)
}
