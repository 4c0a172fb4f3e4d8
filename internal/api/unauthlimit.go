package api

import (
	"net"
	"net/http"
	"sync"
)

// perIPLimiter bounds the requests one client address may have in flight
// at once on the unauthenticated routes (sign-up, login, password flows,
// host registration), so a client cannot hold many slow requests open
// there. The address is the TCP peer's: no header is trusted.
type perIPLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newPerIPLimiter(maxInFlight int) *perIPLimiter {
	if maxInFlight <= 0 {
		maxInFlight = 16
	}
	return &perIPLimiter{max: maxInFlight, n: map[string]int{}}
}

func (l *perIPLimiter) acquire(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip] >= l.max {
		return false
	}
	l.n[ip]++
	return true
}

func (l *perIPLimiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip]--; l.n[ip] <= 0 {
		delete(l.n, ip)
	}
}

// limitUnauthenticated answers 429 rate_limited when the caller's address
// already has MaxUnauthInFlightPerIP requests in flight on these routes.
func (a *API) limitUnauthenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			ip = r.RemoteAddr
		}
		if !a.unauth.acquire(ip) {
			w.Header().Set("Retry-After", "1")
			a.writeError(w, r, errorf(CodeRateLimited, "too many requests in flight from your address; try again in a moment"))
			return
		}
		defer a.unauth.release(ip)
		next.ServeHTTP(w, r)
	})
}
