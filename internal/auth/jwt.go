package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wrenn-dev/wrenn/internal/credstrip"
)

// Claims are what a session token says: who (Subject = user id), which
// team is current, and the credential stamp of the user's password when the
// token was issued (see Sessions.CredentialStamp).
type Claims struct {
	TeamID string `json:"tid"`
	Stamp  string `json:"cst"`
	jwt.RegisteredClaims
}

// Sessions issues and verifies HS256 session tokens.
type Sessions struct {
	key    []byte
	ttl    time.Duration
	issuer string
	now    func() time.Time
}

// NewSessions returns a session issuer. key must be at least 32 bytes.
func NewSessions(key []byte, ttl time.Duration) (*Sessions, error) {
	if len(key) < 32 {
		return nil, errors.New("auth: JWT key must be at least 32 bytes")
	}
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	return &Sessions{key: key, ttl: ttl, issuer: credstrip.SessionIssuer, now: time.Now}, nil
}

// SetClock replaces the clock (tests of expiry).
func (s *Sessions) SetClock(now func() time.Time) { s.now = now }

// TTL is how long an issued token lives.
func (s *Sessions) TTL() time.Duration { return s.ttl }

// CredentialStamp derives a short, non-reversible stamp of a user's
// password hash (empty for OAuth-only users) under the session key. Tokens
// carry the stamp of the hash they were issued under; the API rejects a
// token whose stamp no longer matches, so changing or resetting a password
// ends every session issued before, with no server-side session table.
func (s *Sessions) CredentialStamp(passwordHash string) string {
	m := hmac.New(sha256.New, DeriveKey(s.key, "credential-stamp"))
	m.Write([]byte(passwordHash))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:12])
}

// StampMatches reports, in constant time, whether a token's stamp is the
// current stamp of passwordHash.
func (s *Sessions) StampMatches(c Claims, passwordHash string) bool {
	return hmac.Equal([]byte(c.Stamp), []byte(s.CredentialStamp(passwordHash)))
}

// Issue returns a signed token for userID with teamID current, stamped with
// the user's current password hash (CredentialStamp).
func (s *Sessions) Issue(userID, teamID, passwordHash string) (string, time.Time, error) {
	now := s.now()
	exp := now.Add(s.ttl)
	c := Claims{TeamID: teamID, Stamp: s.CredentialStamp(passwordHash), RegisteredClaims: jwt.RegisteredClaims{
		Subject: userID, Issuer: s.issuer,
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp),
		ID: RandomToken(""),
	}}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign session: %w", err)
	}
	return tok, exp, nil
}

// Parse verifies token and returns its claims: ErrExpired for an expired
// token, ErrMalformed for anything else wrong.
func (s *Sessions) Parse(token string) (Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return s.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(s.issuer), jwt.WithExpirationRequired(), jwt.WithTimeFunc(s.now),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, ErrExpired
	case err != nil:
		return Claims{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	case c.Subject == "":
		return Claims{}, fmt.Errorf("%w: no subject", ErrMalformed)
	}
	return c, nil
}
