package api_test

import (
	"net/http"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

var wsHandshake = []string{
	"Connection", "Upgrade", "Upgrade", "websocket",
	"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==",
}

// TestWebSocketAuthBypass: a query token works only on WebSocket routes,
// only for real handshakes, and a spoofed Upgrade header on a normal
// route gets nothing.
func TestWebSocketAuthBypass(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("wsuser@example.com")
		key := e.apiKey(u, "ws")
		admin := e.signup("wsadmin@example.com")
		e.makeAdmin(admin)
		missing := "cl-0000000000000000"

		tests := []struct {
			name   string
			path   string
			hdr    []string
			want   int
			reason string
		}{
			{"normal route, spoofed upgrade, query JWT", "/v1/capsules?token=" + u.token, wsHandshake, 401, "no bypass on normal routes"},
			{"normal route, spoofed upgrade, query key", "/v1/me?token=" + key, wsHandshake, 401, "no bypass on normal routes"},
			{"normal route, query token only", "/v1/me?token=" + u.token, nil, 401, "query tokens are never read"},
			{"ws route, query JWT, real handshake", "/v1/capsules/" + missing + "/pty?token=" + u.token, wsHandshake, 404, "authenticated, then the capsule is not found"},
			{"ws route, query key, real handshake", "/v1/capsules/" + missing + "/exec/stream?token=" + key, wsHandshake, 404, "authenticated"},
			{"ws route, no credential", "/v1/capsules/" + missing + "/pty", wsHandshake, 401, "credential required"},
			{"ws route, bad query token", "/v1/capsules/" + missing + "/pty?token=nope", wsHandshake, 401, "invalid token"},
			{"ws route, query token, not a handshake", "/v1/capsules/" + missing + "/pty?token=" + u.token, nil, 400, "plain GET refused"},
			{"admin ws, non-admin", "/v1/admin/capsules/" + missing + "/pty?token=" + u.token, wsHandshake, 403, "admin mark enforced"},
			{"admin ws, admin", "/v1/admin/capsules/" + missing + "/pty?token=" + admin.token, wsHandshake, 404, "admin passes"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := e.do("GET", tt.path, "", nil, tt.hdr...)
				if r.status != tt.want {
					t.Fatalf("status = %d, want %d (%s); body %s", r.status, tt.want, tt.reason, r.body)
				}
			})
		}
		// The header path still works on normal routes, upgrade or not.
		e.want(e.do("GET", "/v1/me", u.token, nil, wsHandshake...), http.StatusOK)
	})
}
