package auth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func TestSessions(t *testing.T) {
	s, err := auth.NewSessions(key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := s.Issue("usr-1", "team-1", "hash")
	if err != nil || time.Until(exp) < 59*time.Minute {
		t.Fatalf("Issue: %v, exp %v", err, exp)
	}
	c, err := s.Parse(tok)
	if err != nil || c.Subject != "usr-1" || c.TeamID != "team-1" {
		t.Fatalf("Parse = %+v, %v", c, err)
	}

	past, _ := auth.NewSessions(key, time.Hour)
	past.SetClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
	old, _, _ := past.Issue("usr-1", "team-1", "hash")
	if _, err := s.Parse(old); !errors.Is(err, auth.ErrExpired) {
		t.Fatalf("expired token: %v, want ErrExpired", err)
	}

	none := jwt.NewWithClaims(jwt.SigningMethodNone, auth.Claims{RegisteredClaims: jwt.RegisteredClaims{
		Subject: "usr-1", Issuer: "wrenn", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}})
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	other, _ := auth.NewSessions([]byte("ffffffffffffffffffffffffffffffff"), time.Hour)
	forged, _, _ := other.Issue("usr-1", "team-1", "hash")
	noSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, auth.Claims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer: "wrenn", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}}).SignedString(key)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, auth.Claims{RegisteredClaims: jwt.RegisteredClaims{
		Subject: "usr-1", Issuer: "wrenn",
	}}).SignedString(key)
	for name, bad := range map[string]string{"alg none": unsigned, "other key": forged, "no subject": noSub, "no expiry": noExp, "garbage": "a.b.c", "tampered": tok[:len(tok)-2] + "xx"} {
		if _, err := s.Parse(bad); !errors.Is(err, auth.ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	if _, err := auth.NewSessions([]byte("short"), time.Hour); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestAPIKeys(t *testing.T) {
	k := auth.GenerateAPIKey()
	if !strings.HasPrefix(k.Plain, "wrn_") || !auth.LooksLikeAPIKey(k.Plain) || !strings.HasPrefix(k.Plain, k.Prefix) {
		t.Fatalf("key %+v", k)
	}
	if k.Hash != auth.HashToken(k.Plain) || strings.Contains(k.Hash, k.Plain[4:]) {
		t.Fatal("hash is not the SHA-256 of the key")
	}
	if k2 := auth.GenerateAPIKey(); k2.Plain == k.Plain {
		t.Fatal("two keys are equal")
	}
	for _, s := range []string{"wrn_", "wrn_abc", "xyz_" + k.Plain[4:], k.Plain + "a", "wrn_" + strings.Repeat("!", 32), "eyJhbGciOi.x.y"} {
		if auth.LooksLikeAPIKey(s) {
			t.Errorf("LooksLikeAPIKey(%q) = true", s)
		}
	}
}

func TestHostCredential(t *testing.T) {
	a, b := auth.HostCredential(key, "host-1"), auth.HostCredential(key, "host-1")
	if a != b || a == auth.HostCredential(key, "host-2") || a == auth.HostCredential([]byte("x"), "host-1") {
		t.Fatal("host credentials must be deterministic per key and host and differ otherwise")
	}
	if auth.DeriveKey(key, "a") == nil || string(auth.DeriveKey(key, "a")) == string(auth.DeriveKey(key, "b")) {
		t.Fatal("derived keys collide")
	}
}

func TestStateCookie(t *testing.T) {
	s := auth.NewStateSigner(key)
	c := s.Cookie("state1", auth.IntentSignup)
	tests := []struct {
		name, cookie, state string
		want                string
		ok                  bool
	}{
		{"valid", c, "state1", auth.IntentSignup, true},
		{"other state", c, "state2", "", false},
		{"intent changed", strings.Replace(c, ":signup:", ":login:", 1), "state1", "", false},
		{"state changed in cookie", strings.Replace(c, "state1:", "state2:", 1), "state2", "", false},
		{"other key", auth.NewStateSigner([]byte("k2")).Cookie("state1", auth.IntentSignup), "state1", "", false},
		{"empty state", c, "", "", false},
		{"too few parts", "state1:signup", "state1", "", false},
		{"bad base64", "state1:signup:***", "state1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(tt.cookie, tt.state)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("Verify = %q, %v; want %q ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestCredentialStamp(t *testing.T) {
	s, err := auth.NewSessions(key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.Issue("usr-1", "team-1", "hash-a")
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		hash string
		want bool
	}{
		{"hash-a", true},
		{"hash-b", false},
		{"", false},
	} {
		if got := s.StampMatches(c, tc.hash); got != tc.want {
			t.Errorf("StampMatches(token of hash-a, %q) = %v, want %v", tc.hash, got, tc.want)
		}
	}
	if c.Stamp == "" || c.Stamp == "hash-a" {
		t.Errorf("stamp %q: want a non-empty derived value, never the hash itself", c.Stamp)
	}
	other, _ := auth.NewSessions([]byte("ffffffffffffffffffffffffffffffff"), time.Hour)
	if other.CredentialStamp("hash-a") == s.CredentialStamp("hash-a") {
		t.Error("stamps do not depend on the session key")
	}
	// A token issued before stamps existed carries none: it does not match.
	if s.StampMatches(auth.Claims{}, "") {
		t.Error("an empty stamp matched")
	}
}
