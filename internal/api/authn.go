package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// principal is the authenticated caller.
type principal struct {
	UserID  string
	User    store.User // zero for keys without a creator
	TeamID  string     // current team
	Role    store.Role // "" when the caller is not (or no longer) a member
	KeyID   string     // set when authenticated by API key
	IsAdmin bool
	Via     string // "api_key" or "jwt"
}

func caller(ctx context.Context) *principal {
	p, _ := ctx.Value(keyPrincipal).(*principal)
	return p
}

// credential extracts a credential from headers only: X-API-Key, or
// Authorization: Bearer. Headers set by proxies in front are not consulted.
func credential(r *http.Request) string {
	if k := strings.TrimSpace(r.Header.Get("X-API-Key")); k != "" {
		return k
	}
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return ""
}

// authenticate resolves a credential (API key or JWT) to a principal.
func (a *API) authenticate(ctx context.Context, cred string) (*principal, error) {
	if cred == "" {
		return nil, errorf(CodeUnauthenticated, "missing credentials: send an API key (X-API-Key) or a session token (Authorization: Bearer)")
	}
	if auth.LooksLikeAPIKey(cred) {
		return a.authAPIKey(ctx, cred)
	}
	if strings.HasPrefix(cred, auth.APIKeyPrefix) {
		return nil, errorf(CodeUnauthenticated, "invalid API key")
	}
	claims, err := a.cfg.Sessions.Parse(cred)
	switch {
	case errors.Is(err, auth.ErrExpired):
		return nil, errorf(CodeUnauthenticated, "session token expired; log in again")
	case err != nil:
		return nil, errorf(CodeUnauthenticated, "invalid session token")
	}
	u, err := a.activeUser(ctx, claims.Subject)
	if err != nil {
		return nil, err
	}
	if !a.cfg.Sessions.StampMatches(claims, u.PasswordHash) {
		return nil, errorf(CodeUnauthenticated, "session ended because the password was changed; log in again")
	}
	p := &principal{UserID: u.ID, User: u, TeamID: claims.TeamID, IsAdmin: u.IsAdmin, Via: "jwt"}
	if err := a.fillRole(ctx, p); err != nil {
		return nil, err
	}
	return p, nil
}

func (a *API) authAPIKey(ctx context.Context, key string) (*principal, error) {
	k, err := a.cfg.Store.LookupAPIKey(ctx, auth.HashToken(key))
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(CodeUnauthenticated, "invalid API key")
	}
	if err != nil {
		return nil, err
	}
	p := &principal{TeamID: k.TeamID, KeyID: k.ID, Via: "api_key", Role: store.RoleMember}
	if k.CreatedBy != "" {
		u, err := a.activeUser(ctx, k.CreatedBy)
		if err != nil {
			return nil, err
		}
		p.UserID, p.User, p.IsAdmin = u.ID, u, u.IsAdmin
		if err := a.fillRole(ctx, p); err != nil {
			return nil, err
		}
		if p.Role == "" {
			// The creator left the team; the key still speaks for the
			// team, with the least role.
			p.Role = store.RoleMember
		}
	}
	return p, nil
}

func (a *API) activeUser(ctx context.Context, id string) (store.User, error) {
	u, err := a.cfg.Store.GetUser(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.User{}, errorf(CodeUnauthenticated, "the account no longer exists")
	}
	if err != nil {
		return store.User{}, err
	}
	if u.DeletedAt != nil || u.Status != store.UserActive {
		return store.User{}, errorf(CodeUnauthenticated, "the account is deactivated")
	}
	return u, nil
}

func (a *API) fillRole(ctx context.Context, p *principal) error {
	if p.TeamID == "" || p.UserID == "" {
		return nil
	}
	m, err := a.cfg.Store.GetTeamMember(ctx, p.TeamID, p.UserID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		p.Role = ""
		return nil
	case err != nil:
		return err
	}
	p.Role = m.Role
	return nil
}

func (a *API) withPrincipal(r *http.Request, p *principal) *http.Request {
	if slot, ok := r.Context().Value(keyLogSlot).(*logSlot); ok {
		slot.p = p
	}
	return r.WithContext(context.WithValue(r.Context(), keyPrincipal, p))
}

// requireAuth authenticates from headers only. It never looks at the query
// string or at Upgrade headers: the WebSocket query-token path is a
// separate middleware mounted only on WebSocket routes.
func (a *API) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r.Context(), credential(r))
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, a.withPrincipal(r, p))
	})
}

// WSTokenParam is the query parameter WebSocket routes accept a credential
// in (browsers cannot set headers on a WebSocket handshake).
const WSTokenParam = "token"

// optionalAPIKeyOrJWT is for WebSocket routes only: the credential may come
// from headers or, failing that, from the ?token= query parameter. The
// request must be a genuine WebSocket handshake (GET, Connection: Upgrade,
// Upgrade: websocket); anything else is refused before any credential is
// read from the query.
func (a *API) optionalAPIKeyOrJWT(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isWebSocketHandshake(r) {
			a.writeError(w, r, errorf(CodeInvalidArgument, "this route only accepts WebSocket connections"))
			return
		}
		cred := credential(r)
		if cred == "" {
			cred = r.URL.Query().Get(WSTokenParam)
		}
		p, err := a.authenticate(r.Context(), cred)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		if marked, _ := r.Context().Value(keyAdminWS).(bool); marked && !p.IsAdmin {
			a.writeError(w, r, errorf(CodePermissionDenied, "platform admin required"))
			return
		}
		next.ServeHTTP(w, a.withPrincipal(r, p))
	})
}

// markAdminWS marks the WebSocket routes below it as admin-only;
// optionalAPIKeyOrJWT enforces the mark.
func markAdminWS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyAdminWS, true)))
	})
}

func isWebSocketHandshake(r *http.Request) bool {
	return r.Method == http.MethodGet &&
		headerHasToken(r.Header.Values("Connection"), "upgrade") &&
		headerHasToken(r.Header.Values("Upgrade"), "websocket") &&
		r.Header.Get("Sec-WebSocket-Key") != ""
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// requireAdmin lets platform admins through.
func (a *API) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := caller(r.Context()); p == nil || !p.IsAdmin {
			a.writeError(w, r, errorf(CodePermissionDenied, "platform admin required"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireTeam lets members of the current team through.
func (a *API) requireTeam(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := caller(r.Context())
		if p == nil || p.TeamID == "" || p.Role == "" {
			a.writeError(w, r, errorf(CodePermissionDenied, "you are not a member of the current team; switch team with POST /v1/teams/{id}/switch"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// roleAtLeast reports whether have is min or stronger.
func roleAtLeast(have, minRole store.Role) bool {
	rank := map[store.Role]int{store.RoleMember: 1, store.RoleAdmin: 2, store.RoleOwner: 3}
	return rank[have] >= rank[minRole] && rank[have] > 0
}
