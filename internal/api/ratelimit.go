package api

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limit is a token bucket: Burst attempts at once, then one more every
// Every. The zero value means "use the default"; a negative Burst disables
// the limit.
type Limit struct {
	Burst int
	Every time.Duration
}

// RateLimits bound the endpoints that guess or send secrets. They are kept
// per control-plane replica, in memory.
type RateLimits struct {
	// LoginFailuresPerAccount bounds failed logins per email address
	// (default 10, then 1 per 30 s): the brute-force guard.
	LoginFailuresPerAccount Limit
	// LoginFailuresPerIP bounds failed logins per client address (default
	// 100, then 1 per 3 s): guards against spraying many accounts. The
	// client address is the TCP peer; forwarded-for headers are never
	// trusted, so behind a reverse proxy every client shares one budget.
	LoginFailuresPerIP Limit
	// ResetMailsPerAddress bounds password-reset mails asked for one
	// address, whether or not it has an account (default 3, then 1 per
	// 10 min).
	ResetMailsPerAddress Limit
}

func (l Limit) or(def Limit) Limit {
	if l.Burst == 0 {
		return def
	}
	if l.Every <= 0 {
		l.Every = def.Every
	}
	return l
}

// limiter keeps one token bucket per key. Keys idle long enough for their
// bucket to be full again are forgotten, so memory stays bounded by the
// keys active in the recent window.
type limiter struct {
	lim   Limit
	now   func() time.Time
	mu    sync.Mutex
	keys  map[string]*rate.Limiter
	swept time.Time
}

func newLimiter(l Limit) *limiter {
	return &limiter{lim: l, now: time.Now, keys: map[string]*rate.Limiter{}}
}

func (l *limiter) bucket(key string, now time.Time) *rate.Limiter {
	if now.Sub(l.swept) > time.Minute || len(l.keys) > 100_000 {
		for k, b := range l.keys {
			if b.TokensAt(now) >= float64(l.lim.Burst) {
				delete(l.keys, k)
			}
		}
		l.swept = now
	}
	b := l.keys[key]
	if b == nil {
		b = rate.NewLimiter(rate.Every(l.lim.Every), l.lim.Burst)
		l.keys[key] = b
	}
	return b
}

// wait reports how long key must wait before its next attempt (0: go).
func (l *limiter) wait(key string) time.Duration {
	if l == nil || l.lim.Burst < 0 {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	tokens := l.bucket(key, now).TokensAt(now)
	if tokens >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - tokens) * float64(l.lim.Every)))
}

// spend takes one attempt from key's bucket.
func (l *limiter) spend(key string) {
	if l == nil || l.lim.Burst < 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.bucket(key, now).AllowN(now, 1)
}

type rateLimiters struct {
	loginAccount, loginIP, resetMail *limiter
}

func newRateLimiters(c RateLimits) rateLimiters {
	return rateLimiters{
		loginAccount: newLimiter(c.LoginFailuresPerAccount.or(Limit{Burst: 10, Every: 30 * time.Second})),
		loginIP:      newLimiter(c.LoginFailuresPerIP.or(Limit{Burst: 100, Every: 3 * time.Second})),
		resetMail:    newLimiter(c.ResetMailsPerAddress.or(Limit{Burst: 3, Every: 10 * time.Minute})),
	}
}

// clientIP is the TCP peer's address (never a forwarded-for header).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tooMany writes 429 with Retry-After (whole seconds, at least 1).
func (a *API) tooMany(w http.ResponseWriter, r *http.Request, wait time.Duration, what string) {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	a.writeError(w, r, errorf(CodeRateLimited, "too many %s; try again in %d s", what, secs))
}

func accountKey(email string) string { return strings.ToLower(strings.TrimSpace(email)) }
