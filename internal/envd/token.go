package envd

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"sync"
)

// AccessTokenHeader carries the capsule's access token once /init set one.
const AccessTokenHeader = "X-Access-Token"

// tokenGate enforces the optional access token. Only the SHA-256 of the
// token is kept; comparison is constant-time.
type tokenGate struct {
	mu   sync.RWMutex
	set  bool
	hash [sha256.Size]byte
}

func (g *tokenGate) setToken(tok string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hash = sha256.Sum256([]byte(tok))
	g.set = true
}

func (g *tokenGate) allowed(r *http.Request) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if !g.set {
		return true
	}
	got := sha256.Sum256([]byte(r.Header.Get(AccessTokenHeader)))
	return subtle.ConstantTimeCompare(got[:], g.hash[:]) == 1
}

func (g *tokenGate) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.allowed(r) {
			writeError(w, http.StatusUnauthorized, "missing or invalid "+AccessTokenHeader)
			return
		}
		next.ServeHTTP(w, r)
	})
}
