// Package relay holds what Wrenn's reverse proxies share when they forward
// a request to the next hop with httputil.ReverseProxy: the two hops of the
// E2B envd route (the control plane's /e2b/envd, the host agent's
// /envd/{capsule}/) and of the port proxy (internal/proxy,
// internal/hostagent/portproxy).
//
// Invariant: a forwarded request is served in full-duplex mode. Without
// it, Go's HTTP/1 server touches the request body when the proxied
// response's headers are written: it drains and closes a body the handler
// has not closed yet. The proxy's Transport, which reads that same body in
// its write loop (it reads once more after the declared length to check for
// extra bytes, after the bytes are already on the wire), then fails with
// "invalid Read on closed Body", takes it for a write error and closes the
// upstream connection, cutting a response that is already streaming: the
// E2B SDK's "terminated" on a command's output stream (issue 14). With a
// body that is still arriving (a duplex stream), the drain also steals the
// bytes the upstream is waiting for.
package relay

import (
	"log/slog"
	"net/http"
)

// FullDuplex serves r with next (a reverse proxy) after putting the
// connection in full-duplex mode: the server leaves the request body to
// next while the response streams. A ResponseWriter that cannot (not a
// server connection, e.g. a test recorder) is served as it is.
func FullDuplex(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			if err := http.NewResponseController(w).EnableFullDuplex(); err != nil && log != nil {
				log.DebugContext(r.Context(), "relay: full duplex unavailable", "err", err)
			}
		}
		next.ServeHTTP(w, r)
	})
}
