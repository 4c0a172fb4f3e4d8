// Package credstrip recognises Wrenn's own credentials in an HTTP request
// and removes them before the request is forwarded to code inside a
// capsule. Both port proxies (the control plane's, internal/proxy, and the
// host agent's, internal/hostagent/portproxy) call Request on every
// request they forward.
//
// What is a Wrenn credential (and removed):
//   - every header whose name starts with X-Wrenn- (the capsule access
//     token, the host secret, proxy hints: a proxy sets its own after
//     stripping) and the API-key header X-API-Key;
//   - an Authorization value "Bearer <t>" (any case) where t is a Wrenn
//     token (TokenPrefixes: API keys wrn_, host credentials wrh_, host
//     registration tokens wrt_, capsule access tokens wrc_, team invites
//     wri_) or a session JWT (a JWT whose payload says iss = SessionIssuer);
//   - every cookie whose name starts with CookiePrefix (all cookies the API
//     sets are named wrenn_…);
//   - the query parameter wrenn_access_token, and any query parameter
//     whose value is a Wrenn token or session JWT (token, the API's
//     WebSocket credential, among them).
//
// Everything else is forwarded untouched: other Authorization schemes
// (envd reads the user from Basic; apps use their own), other bearer
// tokens, other cookies, other query parameters (kept byte for byte, in
// order).
//
// The package imports only the standard library, so the host agent can use
// it without the control plane's dependencies.
package credstrip

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// Names of the credentials Wrenn reads.
const (
	// APIKeyHeader carries an API key to the API.
	APIKeyHeader = "X-API-Key"
	// HeaderPrefix starts every Wrenn-internal header.
	HeaderPrefix = "X-Wrenn-"
	// AccessTokenParam is the query form of a capsule's access token.
	AccessTokenParam = "wrenn_access_token"
	// TokenParam is the API's query credential (WebSocket routes).
	TokenParam = "token"
	// CookiePrefix starts the name of every cookie the API sets.
	CookiePrefix = "wrenn_"
	// SessionIssuer is the "iss" claim of the session JWTs the control
	// plane issues (internal/auth).
	SessionIssuer = "wrenn"
)

// TokenPrefixes start Wrenn's random tokens (internal/auth.RandomToken
// callers): API keys, host credentials, host registration tokens, capsule
// access tokens and team invites.
var TokenPrefixes = []string{"wrn_", "wrh_", "wrt_", "wrc_", "wri_"}

// IsWrennToken reports whether s is one of Wrenn's own tokens: a prefixed
// random token or a session JWT issued by the control plane (recognised by
// its issuer, without checking the signature, so an expired token or one
// signed under an older secret is recognised too).
func IsWrennToken(s string) bool {
	s = strings.TrimSpace(s)
	for _, p := range TokenPrefixes {
		if len(s) > len(p) && strings.EqualFold(s[:len(p)], p) {
			return true
		}
	}
	return isSessionJWT(s)
}

func isSessionJWT(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[1]) > 8192 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return false
	}
	var claims struct {
		Issuer any `json:"iss"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return false
	}
	iss, _ := claims.Issuer.(string)
	return iss == SessionIssuer
}

// isWrennAuthorization reports whether an Authorization value is a bearer
// Wrenn token.
func isWrennAuthorization(v string) bool {
	v = strings.TrimSpace(v)
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return IsWrennToken(cred)
}

// IsWrennCookie reports whether a cookie name is one the API sets.
func IsWrennCookie(name string) bool {
	name = strings.TrimSpace(name)
	return len(name) >= len(CookiePrefix) && strings.EqualFold(name[:len(CookiePrefix)], CookiePrefix)
}

// Request removes every Wrenn credential from r's headers and query, in
// place. Call it on the outgoing copy of a request, after reading whatever
// the proxy itself needs (the access token), before setting the proxy's own
// X-Wrenn- headers.
func Request(r *http.Request) {
	Header(r.Header)
	if r.URL != nil && r.URL.RawQuery != "" {
		r.URL.RawQuery = Query(r.URL.RawQuery)
		r.URL.ForceQuery = false
	}
}

// Header removes Wrenn credentials from h in place.
func Header(h http.Header) {
	apiKey := http.CanonicalHeaderKey(APIKeyHeader)
	for name := range h {
		if c := http.CanonicalHeaderKey(name); strings.HasPrefix(c, HeaderPrefix) || c == apiKey {
			delete(h, name)
		}
	}
	if vs, ok := h["Authorization"]; ok {
		kept := vs[:0:0]
		for _, v := range vs {
			if !isWrennAuthorization(v) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(h, "Authorization")
		} else {
			h["Authorization"] = kept
		}
	}
	if vs, ok := h["Cookie"]; ok {
		var kept []string
		for _, v := range vs {
			for _, pair := range strings.Split(v, ";") {
				pair = strings.TrimSpace(pair)
				if pair == "" {
					continue
				}
				name, _, _ := strings.Cut(pair, "=")
				if !IsWrennCookie(name) {
					kept = append(kept, pair)
				}
			}
		}
		if len(kept) == 0 {
			delete(h, "Cookie")
		} else {
			h["Cookie"] = []string{strings.Join(kept, "; ")}
		}
	}
}

// Query returns rawQuery without wrenn_access_token and without any
// parameter whose value is a Wrenn token (such as the API's ?token=). The other parameters are kept byte
// for byte and in order.
func Query(rawQuery string) string {
	if rawQuery == "" {
		return ""
	}
	pieces := strings.Split(rawQuery, "&")
	kept := pieces[:0]
	changed := false
	for _, piece := range pieces {
		k, v, _ := strings.Cut(piece, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			key = k
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			val = v
		}
		if strings.EqualFold(key, AccessTokenParam) || IsWrennToken(val) {
			changed = true
			continue
		}
		kept = append(kept, piece)
	}
	if !changed {
		return rawQuery
	}
	return strings.Join(kept, "&")
}
