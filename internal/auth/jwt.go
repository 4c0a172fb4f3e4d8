package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a session token says: who (Subject = user id) and which
// team is current.
type Claims struct {
	TeamID string `json:"tid"`
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
	return &Sessions{key: key, ttl: ttl, issuer: "wrenn", now: time.Now}, nil
}

// SetClock replaces the clock (tests of expiry).
func (s *Sessions) SetClock(now func() time.Time) { s.now = now }

// TTL is how long an issued token lives.
func (s *Sessions) TTL() time.Duration { return s.ttl }

// Issue returns a signed token for userID with teamID current.
func (s *Sessions) Issue(userID, teamID string) (string, time.Time, error) {
	now := s.now()
	exp := now.Add(s.ttl)
	c := Claims{TeamID: teamID, RegisteredClaims: jwt.RegisteredClaims{
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
