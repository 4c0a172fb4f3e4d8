// Package auth owns the control plane's credentials: password hashing
// (argon2id), JWT sessions, API keys, random one-time tokens (host
// registration, capsule access, host credentials) and GitHub OAuth (state
// signing and the code exchange).
//
// Invariants:
//   - Secrets are never stored in clear: passwords as argon2id hashes,
//     high-entropy tokens and API keys as SHA-256 hex digests (a slow hash
//     buys nothing for 160-bit random secrets).
//   - Comparisons of secrets run in constant time.
//   - A JWT is accepted only when signed with HS256 by our key, unexpired,
//     and carrying a subject; the current team travels in the token.
//   - The OAuth state cookie is an HMAC over exactly state + ":" + intent.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/alexedwards/argon2id"
)

// Errors callers test with errors.Is.
var (
	ErrInvalidCredentials = errors.New("invalid credentials")
	ErrExpired            = errors.New("token expired")
	ErrMalformed          = errors.New("malformed token")
)

// APIKeyPrefix starts every API key.
const APIKeyPrefix = "wrn_"

// argonParams follow the argon2id RFC 9106 second recommendation scaled for
// a login endpoint: 64 MiB, 1 pass, 2 lanes.
var argonParams = &argon2id.Params{Memory: 64 * 1024, Iterations: 1, Parallelism: 2, SaltLength: 16, KeyLength: 32}

// MinPasswordLen and MaxPasswordLen bound passwords (the upper bound keeps
// hashing cost fixed).
const (
	MinPasswordLen = 8
	MaxPasswordLen = 256
)

// HashPassword returns an argon2id PHC string for password.
func HashPassword(password string) (string, error) {
	h, err := argon2id.CreateHash(password, argonParams)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return h, nil
}

// CheckPassword reports ErrInvalidCredentials unless password matches hash.
func CheckPassword(password, hash string) error {
	if hash == "" {
		return ErrInvalidCredentials
	}
	ok, err := argon2id.ComparePasswordAndHash(password, hash)
	if err != nil || !ok {
		return ErrInvalidCredentials
	}
	return nil
}

var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// RandomToken returns prefix followed by 32 base32 characters (160 bits).
func RandomToken(prefix string) string {
	var b [20]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	return prefix + tokenEncoding.EncodeToString(b[:])
}

// HashToken returns the hex SHA-256 of a high-entropy token.
func HashToken(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// EqualHash compares two hex digests in constant time.
func EqualHash(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// NewAPIKey is a freshly generated key: Plain is shown once, Prefix and
// Hash are stored.
type NewAPIKey struct {
	Plain  string
	Prefix string
	Hash   string
}

// GenerateAPIKey returns a new "wrn_…" key.
func GenerateAPIKey() NewAPIKey {
	plain := RandomToken(APIKeyPrefix)
	return NewAPIKey{Plain: plain, Prefix: plain[:len(APIKeyPrefix)+8], Hash: HashToken(plain)}
}

// LooksLikeAPIKey reports whether s has an API key's shape (so a bearer
// token can be told apart from a JWT without a store lookup).
func LooksLikeAPIKey(s string) bool {
	if !strings.HasPrefix(s, APIKeyPrefix) || len(s) != len(APIKeyPrefix)+32 {
		return false
	}
	_, err := tokenEncoding.DecodeString(s[len(APIKeyPrefix):])
	return err == nil
}

// DeriveKey returns HMAC-SHA256(secret, label): independent keys for
// independent uses of one configured secret.
func DeriveKey(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// HostCredential returns the per-host secret for hostID under key: the
// host presents it to the control plane, and the control plane presents it
// to the host's agent. Only its hash is stored; every replica holding key
// can recompute it.
func HostCredential(key []byte, hostID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("host:" + hostID))
	return "wrh_" + tokenEncoding.EncodeToString(m.Sum(nil))
}
