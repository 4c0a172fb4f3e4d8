package sqlite

// This file maps the sqlc queries to store.Store. Its body is the same in
// internal/store/postgres/store.go; the dialects differ only in the helpers
// (ts, tm, lim, day, mapErr, tx) defined next to Open.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	db "github.com/wrenn-dev/wrenn/internal/store/sqlite/sqlitedb"
)

var _ store.Store = (*Store)(nil)

// apiKeyTouchInterval bounds writes for API key last-used times.
const apiKeyTouchInterval = time.Minute

func one(n int64, err error, what string) error {
	if err != nil {
		return mapErr(err, what)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	return nil
}

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// ---- teams ----

func toTeam(t db.Team) store.Team {
	out := store.Team{
		ID: t.ID, Name: t.Name, IsBYOC: t.IsByoc, IsPlatform: t.IsPlatform, CapsuleInternet: t.CapsuleInternet,
		DefaultIsolation: str(t.DefaultIsolation), CreatedAt: tm(t.CreatedAt), UpdatedAt: tm(t.UpdatedAt),
		Lifecycle: store.LifecycleDefaults{OnTimeout: t.OnTimeout, AutoResume: t.AutoResume},
	}
	if t.AllowedPrivateRanges != nil {
		// Written only by SetTeamPrivateRanges; a row that does not parse
		// allows nothing.
		_ = json.Unmarshal([]byte(*t.AllowedPrivateRanges), &out.AllowedPrivateRanges)
	}
	return out
}

// CreateTeam implements store.Store.
func (s *Store) CreateTeam(ctx context.Context, t store.Team) (store.Team, error) {
	if t.ID == "" {
		t.ID = store.NewID(store.PrefixTeam)
	}
	row, err := s.qw.CreateTeam(ctx, db.CreateTeamParams{ID: t.ID, Name: t.Name, IsByoc: t.IsBYOC, CreatedAt: ts(store.Now())})
	if err != nil {
		return store.Team{}, mapErr(err, "create team")
	}
	return toTeam(row), nil
}

// GetTeam implements store.Store.
func (s *Store) GetTeam(ctx context.Context, id string) (store.Team, error) {
	row, err := s.qr.GetTeam(ctx, id)
	if err != nil {
		return store.Team{}, mapErr(err, "get team")
	}
	return toTeam(row), nil
}

// GetPlatformTeam implements store.Store.
func (s *Store) GetPlatformTeam(ctx context.Context) (store.Team, error) {
	row, err := s.qr.GetPlatformTeam(ctx)
	if err != nil {
		return store.Team{}, mapErr(err, "get platform team")
	}
	return toTeam(row), nil
}

// ListTeams implements store.Store.
func (s *Store) ListTeams(ctx context.Context) ([]store.Team, error) {
	rows, err := s.qr.ListTeams(ctx)
	if err != nil {
		return nil, mapErr(err, "list teams")
	}
	out := make([]store.Team, 0, len(rows))
	for _, r := range rows {
		out = append(out, toTeam(r))
	}
	return out, nil
}

// ListTeamsForUser implements store.Store.
func (s *Store) ListTeamsForUser(ctx context.Context, userID string) ([]store.TeamMembership, error) {
	rows, err := s.qr.ListTeamsForUser(ctx, userID)
	if err != nil {
		return nil, mapErr(err, "list teams for user")
	}
	out := make([]store.TeamMembership, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.TeamMembership{
			Team: toTeam(db.Team{
				ID: r.ID, Name: r.Name, IsByoc: r.IsByoc, IsPlatform: r.IsPlatform,
				CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, CapsuleInternet: r.CapsuleInternet, DefaultIsolation: r.DefaultIsolation,
				OnTimeout: r.OnTimeout, AutoResume: r.AutoResume,
			}),
			Role: store.Role(r.Role),
		})
	}
	return out, nil
}

// RenameTeam implements store.Store.
func (s *Store) RenameTeam(ctx context.Context, id, name string) error {
	n, err := s.qw.RenameTeam(ctx, db.RenameTeamParams{ID: id, Name: name, UpdatedAt: ts(store.Now())})
	return one(n, err, "rename team")
}

// SetTeamCapsuleInternet implements store.Store.
func (s *Store) SetTeamCapsuleInternet(ctx context.Context, id string, v *bool) error {
	n, err := s.qw.SetTeamCapsuleInternet(ctx, db.SetTeamCapsuleInternetParams{ID: id, CapsuleInternet: v, UpdatedAt: ts(store.Now())})
	return one(n, err, "set team capsule internet")
}

// SetTeamDefaultIsolation implements store.Store.
func (s *Store) SetTeamDefaultIsolation(ctx context.Context, id, isolation string) error {
	n, err := s.qw.SetTeamDefaultIsolation(ctx, db.SetTeamDefaultIsolationParams{ID: id, DefaultIsolation: strp(isolation), UpdatedAt: ts(store.Now())})
	return one(n, err, "set team default isolation")
}

// SetTeamPrivateRanges implements store.Store.
func (s *Store) SetTeamPrivateRanges(ctx context.Context, id string, ranges []string) error {
	var v *string
	if len(ranges) > 0 {
		b, err := json.Marshal(ranges)
		if err != nil {
			return fmt.Errorf("set team private ranges: %w", err)
		}
		v = strp(string(b))
	}
	n, err := s.qw.SetTeamPrivateRanges(ctx, db.SetTeamPrivateRangesParams{ID: id, AllowedPrivateRanges: v, UpdatedAt: ts(store.Now())})
	return one(n, err, "set team private ranges")
}

// SetTeamBYOC implements store.Store.
func (s *Store) SetTeamBYOC(ctx context.Context, id string, byoc bool) error {
	n, err := s.qw.SetTeamBYOC(ctx, db.SetTeamBYOCParams{ID: id, IsByoc: byoc, UpdatedAt: ts(store.Now())})
	return one(n, err, "set team byoc")
}

// DeleteTeam implements store.Store.
func (s *Store) DeleteTeam(ctx context.Context, id string) error {
	if id == store.PlatformTeamID {
		return fmt.Errorf("delete team: the platform team: %w", store.ErrConflict)
	}
	n, err := s.qw.DeleteTeam(ctx, id)
	return one(n, err, "delete team")
}

// ---- members and invites ----

func toMember(m db.TeamMember) store.Member {
	return store.Member{TeamID: m.TeamID, UserID: m.UserID, Role: store.Role(m.Role), CreatedAt: tm(m.CreatedAt)}
}

// AddTeamMember implements store.Store.
func (s *Store) AddTeamMember(ctx context.Context, teamID, userID string, role store.Role) (store.Member, error) {
	row, err := s.qw.AddTeamMember(ctx, db.AddTeamMemberParams{
		TeamID: teamID, UserID: userID, Role: string(role), CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.Member{}, mapErr(err, "add team member")
	}
	return toMember(row), nil
}

// GetTeamMember implements store.Store.
func (s *Store) GetTeamMember(ctx context.Context, teamID, userID string) (store.Member, error) {
	row, err := s.qr.GetTeamMember(ctx, db.GetTeamMemberParams{TeamID: teamID, UserID: userID})
	if err != nil {
		return store.Member{}, mapErr(err, "get team member")
	}
	return toMember(row), nil
}

// ListTeamMembers implements store.Store.
func (s *Store) ListTeamMembers(ctx context.Context, teamID string) ([]store.Member, error) {
	rows, err := s.qr.ListTeamMembers(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list team members")
	}
	out := make([]store.Member, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.Member{
			TeamID: r.TeamID, UserID: r.UserID, Role: store.Role(r.Role),
			Email: r.Email, Name: r.Name, CreatedAt: tm(r.CreatedAt),
		})
	}
	return out, nil
}

// UpdateTeamMemberRole implements store.Store.
func (s *Store) UpdateTeamMemberRole(ctx context.Context, teamID, userID string, role store.Role) error {
	n, err := s.qw.UpdateTeamMemberRole(ctx, db.UpdateTeamMemberRoleParams{TeamID: teamID, UserID: userID, Role: string(role)})
	return one(n, err, "update team member role")
}

// RemoveTeamMember implements store.Store.
func (s *Store) RemoveTeamMember(ctx context.Context, teamID, userID string) error {
	n, err := s.qw.RemoveTeamMember(ctx, db.RemoveTeamMemberParams{TeamID: teamID, UserID: userID})
	return one(n, err, "remove team member")
}

func toInvite(i db.TeamInvite) store.Invite {
	return store.Invite{
		ID: i.ID, TeamID: i.TeamID, Email: i.Email, Role: store.Role(i.Role), TokenHash: i.TokenHash,
		InvitedBy: str(i.InvitedBy), CreatedAt: tm(i.CreatedAt), ExpiresAt: tm(i.ExpiresAt),
		AcceptedAt: tmp(i.AcceptedAt),
	}
}

func toInvites(rows []db.TeamInvite) []store.Invite {
	out := make([]store.Invite, 0, len(rows))
	for _, r := range rows {
		out = append(out, toInvite(r))
	}
	return out
}

// CreateInvite implements store.Store.
func (s *Store) CreateInvite(ctx context.Context, inv store.Invite) (store.Invite, error) {
	if inv.ID == "" {
		inv.ID = store.NewID(store.PrefixInvite)
	}
	row, err := s.qw.CreateTeamInvite(ctx, db.CreateTeamInviteParams{
		ID: inv.ID, TeamID: inv.TeamID, Email: store.NormalizeEmail(inv.Email), Role: string(inv.Role),
		TokenHash: inv.TokenHash, InvitedBy: strp(inv.InvitedBy),
		CreatedAt: ts(store.Now()), ExpiresAt: ts(store.Truncate(inv.ExpiresAt)),
	})
	if err != nil {
		return store.Invite{}, mapErr(err, "create invite")
	}
	return toInvite(row), nil
}

// ListInvites implements store.Store.
func (s *Store) ListInvites(ctx context.Context, teamID string) ([]store.Invite, error) {
	rows, err := s.qr.ListTeamInvites(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list invites")
	}
	return toInvites(rows), nil
}

// ListInvitesForEmail implements store.Store.
func (s *Store) ListInvitesForEmail(ctx context.Context, email string) ([]store.Invite, error) {
	rows, err := s.qr.ListInvitesForEmail(ctx, db.ListInvitesForEmailParams{
		Email: store.NormalizeEmail(email), Now: ts(store.Now()),
	})
	if err != nil {
		return nil, mapErr(err, "list invites for email")
	}
	return toInvites(rows), nil
}

// GetInviteByTokenHash implements store.Store.
func (s *Store) GetInviteByTokenHash(ctx context.Context, tokenHash string) (store.Invite, error) {
	row, err := s.qr.GetTeamInviteByTokenHash(ctx, tokenHash)
	if err != nil {
		return store.Invite{}, mapErr(err, "get invite")
	}
	return toInvite(row), nil
}

// AcceptInvite implements store.Store.
func (s *Store) AcceptInvite(ctx context.Context, inviteID, userID string) (store.Member, error) {
	var m store.Member
	err := s.tx(ctx, func(q *db.Queries) error {
		inv, err := q.GetTeamInvite(ctx, inviteID)
		if err != nil {
			return mapErr(err, "get invite")
		}
		now := store.Now()
		n, err := q.MarkTeamInviteAccepted(ctx, db.MarkTeamInviteAcceptedParams{ID: inviteID, Now: tsp(&now)})
		if err != nil {
			return mapErr(err, "accept invite")
		}
		if n == 0 {
			return fmt.Errorf("accept invite: already accepted or expired: %w", store.ErrConflict)
		}
		row, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{
			TeamID: inv.TeamID, UserID: userID, Role: inv.Role, CreatedAt: ts(now),
		})
		if err != nil {
			return mapErr(err, "accept invite: add member")
		}
		m = toMember(row)
		return nil
	})
	return m, err
}

// DeleteInvite implements store.Store.
func (s *Store) DeleteInvite(ctx context.Context, teamID, inviteID string) error {
	n, err := s.qw.DeleteTeamInvite(ctx, db.DeleteTeamInviteParams{TeamID: teamID, ID: inviteID})
	return one(n, err, "delete invite")
}

// ---- users ----

func toUser(u db.User) store.User {
	return store.User{
		ID: u.ID, Email: u.Email, Name: u.Name, PasswordHash: str(u.PasswordHash),
		EmailVerified: u.EmailVerified, IsAdmin: u.IsAdmin, Status: store.UserStatus(u.Status),
		CreatedAt: tm(u.CreatedAt), UpdatedAt: tm(u.UpdatedAt), DeletedAt: tmp(u.DeletedAt),
	}
}

// CreateUser implements store.Store.
func (s *Store) CreateUser(ctx context.Context, u store.User) (store.User, error) {
	if u.ID == "" {
		u.ID = store.NewID(store.PrefixUser)
	}
	row, err := s.qw.CreateUser(ctx, db.CreateUserParams{
		ID: u.ID, Email: store.NormalizeEmail(u.Email), Name: u.Name, PasswordHash: strp(u.PasswordHash),
		EmailVerified: u.EmailVerified, IsAdmin: u.IsAdmin, CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.User{}, mapErr(err, "create user")
	}
	return toUser(row), nil
}

// GetUser implements store.Store.
func (s *Store) GetUser(ctx context.Context, id string) (store.User, error) {
	row, err := s.qr.GetUser(ctx, id)
	if err != nil {
		return store.User{}, mapErr(err, "get user")
	}
	return toUser(row), nil
}

// GetUserByEmail implements store.Store.
func (s *Store) GetUserByEmail(ctx context.Context, email string) (store.User, error) {
	row, err := s.qr.GetUserByEmail(ctx, store.NormalizeEmail(email))
	if err != nil {
		return store.User{}, mapErr(err, "get user by email")
	}
	return toUser(row), nil
}

// ListUsers implements store.Store.
func (s *Store) ListUsers(ctx context.Context, f store.UserFilter) ([]store.User, error) {
	rows, err := s.qr.ListUsers(ctx, db.ListUsersParams{
		Pattern: "%" + likeEscape(store.NormalizeEmail(f.Search)) + "%",
		Lim:     lim(store.ClampLimit(f.Limit, 100, 1000)),
		Off:     lim(max(f.Offset, 0)),
	})
	if err != nil {
		return nil, mapErr(err, "list users")
	}
	out := make([]store.User, 0, len(rows))
	for _, r := range rows {
		out = append(out, toUser(r))
	}
	return out, nil
}

// likeEscape drops LIKE wildcards from a search string so they match
// literally nowhere rather than everything.
func likeEscape(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == '%' || r == '_' || r == '\\' {
			continue
		}
		out = append(out, r)
	}
	return string(out)
}

// SetUserName implements store.Store.
func (s *Store) SetUserName(ctx context.Context, id, name string) error {
	n, err := s.qw.SetUserName(ctx, db.SetUserNameParams{ID: id, Name: name, UpdatedAt: ts(store.Now())})
	return one(n, err, "set user name")
}

// SetUserPassword implements store.Store.
func (s *Store) SetUserPassword(ctx context.Context, id, passwordHash string) error {
	n, err := s.qw.SetUserPassword(ctx, db.SetUserPasswordParams{ID: id, PasswordHash: strp(passwordHash), UpdatedAt: ts(store.Now())})
	return one(n, err, "set user password")
}

// SetUserEmailVerified implements store.Store.
func (s *Store) SetUserEmailVerified(ctx context.Context, id string, verified bool) error {
	n, err := s.qw.SetUserEmailVerified(ctx, db.SetUserEmailVerifiedParams{ID: id, EmailVerified: verified, UpdatedAt: ts(store.Now())})
	return one(n, err, "set user email verified")
}

// refusedOrMissing tells apart why a guarded user update did not apply.
func (s *Store) refusedOrMissing(ctx context.Context, id, what string) error {
	if _, err := s.qw.GetUser(ctx, id); err != nil {
		return mapErr(err, what)
	}
	return fmt.Errorf("%s: %w", what, store.ErrLastAdmin)
}

// SetUserActive implements store.Store.
func (s *Store) SetUserActive(ctx context.Context, id string, active bool) error {
	if active {
		n, err := s.qw.ActivateUser(ctx, db.ActivateUserParams{ID: id, UpdatedAt: ts(store.Now())})
		return one(n, err, "activate user")
	}
	var n int64
	err := s.retry(ctx, func() (err error) {
		n, err = s.qw.DeactivateUser(ctx, db.DeactivateUserParams{ID: id, UpdatedAt: ts(store.Now())})
		return err
	})
	if err != nil {
		return mapErr(err, "deactivate user")
	}
	if n == 0 {
		return s.refusedOrMissing(ctx, id, "deactivate user")
	}
	return nil
}

// SoftDeleteUser implements store.Store.
func (s *Store) SoftDeleteUser(ctx context.Context, id string) error {
	err := s.retry(ctx, func() error {
		return s.tx(ctx, func(q *db.Queries) error {
			now := store.Now()
			n, err := q.SoftDeleteUser(ctx, db.SoftDeleteUserParams{
				ID: id, Now: tsp(&now), TombstoneEmail: id + "@deleted.invalid",
			})
			if err != nil {
				return err
			}
			if n == 0 {
				return errNotApplied
			}
			if err := q.RemoveUserMemberships(ctx, id); err != nil {
				return err
			}
			if err := q.RemoveUserOAuthLinks(ctx, id); err != nil {
				return err
			}
			if err := q.DeleteAllUserTokens(ctx, id); err != nil {
				return err
			}
			_, err = q.AnonymizeUserAuditLogs(ctx, id)
			return err
		})
	})
	if errors.Is(err, errNotApplied) {
		return s.refusedOrMissing(ctx, id, "delete user")
	}
	if err != nil {
		return mapErr(err, "delete user")
	}
	return nil
}

var errNotApplied = errors.New("not applied")

// GrantUserAdmin implements store.Store.
func (s *Store) GrantUserAdmin(ctx context.Context, id string) (bool, error) {
	n, err := s.qw.GrantUserAdmin(ctx, db.GrantUserAdminParams{ID: id, UpdatedAt: ts(store.Now())})
	if err != nil {
		return false, mapErr(err, "grant admin")
	}
	if n == 0 {
		if _, err := s.qw.GetUser(ctx, id); err != nil {
			return false, mapErr(err, "grant admin")
		}
		return false, nil
	}
	return true, nil
}

// RevokeUserAdmin implements store.Store.
func (s *Store) RevokeUserAdmin(ctx context.Context, id string) (bool, error) {
	var n int64
	err := s.retry(ctx, func() (err error) {
		n, err = s.qw.RevokeUserAdmin(ctx, db.RevokeUserAdminParams{ID: id, UpdatedAt: ts(store.Now())})
		return err
	})
	if err != nil {
		return false, mapErr(err, "revoke admin")
	}
	if n > 0 {
		return true, nil
	}
	u, err := s.qw.GetUser(ctx, id)
	if err != nil {
		return false, mapErr(err, "revoke admin")
	}
	if !u.IsAdmin {
		return false, nil
	}
	return false, fmt.Errorf("revoke admin: %w", store.ErrLastAdmin)
}

// CountActiveAdmins implements store.Store.
func (s *Store) CountActiveAdmins(ctx context.Context) (int64, error) {
	n, err := s.qr.CountActiveAdmins(ctx)
	return n, mapErr(err, "count admins")
}

// ---- user tokens ----

// CreateUserToken implements store.Store.
func (s *Store) CreateUserToken(ctx context.Context, tok store.UserToken) error {
	err := s.qw.CreateUserToken(ctx, db.CreateUserTokenParams{
		TokenHash: tok.TokenHash, UserID: tok.UserID, Kind: string(tok.Kind),
		CreatedAt: ts(store.Now()), ExpiresAt: ts(store.Truncate(tok.ExpiresAt)),
	})
	return mapErr(err, "create user token")
}

// ConsumeUserToken implements store.Store.
func (s *Store) ConsumeUserToken(ctx context.Context, tokenHash string, kind store.TokenKind) (store.UserToken, error) {
	row, err := s.qw.ConsumeUserToken(ctx, db.ConsumeUserTokenParams{TokenHash: tokenHash, Kind: string(kind), Now: ts(store.Now())})
	if err != nil {
		return store.UserToken{}, mapErr(err, "consume user token")
	}
	return store.UserToken{
		TokenHash: row.TokenHash, UserID: row.UserID, Kind: store.TokenKind(row.Kind),
		CreatedAt: tm(row.CreatedAt), ExpiresAt: tm(row.ExpiresAt),
	}, nil
}

// DeleteUserTokens implements store.Store.
func (s *Store) DeleteUserTokens(ctx context.Context, userID string, kind store.TokenKind) error {
	return mapErr(s.qw.DeleteUserTokens(ctx, db.DeleteUserTokensParams{UserID: userID, Kind: string(kind)}), "delete user tokens")
}

// ---- API keys ----

func toAPIKey(k db.ApiKey) store.APIKey {
	return store.APIKey{
		ID: k.ID, TeamID: k.TeamID, Name: k.Name, Prefix: k.Prefix, Hash: k.KeyHash,
		CreatedBy: str(k.CreatedBy), CreatedAt: tm(k.CreatedAt), LastUsedAt: tmp(k.LastUsedAt),
	}
}

// CreateAPIKey implements store.Store.
func (s *Store) CreateAPIKey(ctx context.Context, k store.APIKey) (store.APIKey, error) {
	if k.ID == "" {
		k.ID = store.NewID(store.PrefixAPIKey)
	}
	row, err := s.qw.CreateAPIKey(ctx, db.CreateAPIKeyParams{
		ID: k.ID, TeamID: k.TeamID, Name: k.Name, Prefix: k.Prefix, KeyHash: k.Hash,
		CreatedBy: strp(k.CreatedBy), CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.APIKey{}, mapErr(err, "create api key")
	}
	return toAPIKey(row), nil
}

// ListAPIKeys implements store.Store.
func (s *Store) ListAPIKeys(ctx context.Context, teamID string) ([]store.APIKey, error) {
	rows, err := s.qr.ListAPIKeys(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list api keys")
	}
	out := make([]store.APIKey, 0, len(rows))
	for _, r := range rows {
		out = append(out, toAPIKey(r))
	}
	return out, nil
}

// DeleteAPIKey implements store.Store.
func (s *Store) DeleteAPIKey(ctx context.Context, teamID, id string) error {
	n, err := s.qw.DeleteAPIKey(ctx, db.DeleteAPIKeyParams{TeamID: teamID, ID: id})
	return one(n, err, "delete api key")
}

// LookupAPIKey implements store.Store.
func (s *Store) LookupAPIKey(ctx context.Context, hash string) (store.APIKey, error) {
	row, err := s.qr.GetAPIKeyByHash(ctx, hash)
	if err != nil {
		return store.APIKey{}, mapErr(err, "lookup api key")
	}
	k := toAPIKey(row)
	now := store.Now()
	if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) >= apiKeyTouchInterval {
		stale := now.Add(-apiKeyTouchInterval)
		if _, err := s.qw.TouchAPIKey(ctx, db.TouchAPIKeyParams{ID: k.ID, Now: tsp(&now), StaleBefore: tsp(&stale)}); err != nil {
			return store.APIKey{}, mapErr(err, "touch api key")
		}
		k.LastUsedAt = &now
	}
	return k, nil
}

// ---- OAuth ----

func toOAuth(o db.OauthProvider) store.OAuthLink {
	return store.OAuthLink{
		Provider: o.Provider, ProviderUserID: o.ProviderUserID, UserID: o.UserID, Email: o.Email,
		CreatedAt: tm(o.CreatedAt),
	}
}

// LinkOAuth implements store.Store.
func (s *Store) LinkOAuth(ctx context.Context, l store.OAuthLink) (store.OAuthLink, error) {
	row, err := s.qw.LinkOAuth(ctx, db.LinkOAuthParams{
		Provider: l.Provider, ProviderUserID: l.ProviderUserID, UserID: l.UserID,
		Email: store.NormalizeEmail(l.Email), CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.OAuthLink{}, mapErr(err, "link oauth")
	}
	return toOAuth(row), nil
}

// GetOAuthLink implements store.Store.
func (s *Store) GetOAuthLink(ctx context.Context, provider, providerUserID string) (store.OAuthLink, error) {
	row, err := s.qr.GetOAuthLink(ctx, db.GetOAuthLinkParams{Provider: provider, ProviderUserID: providerUserID})
	if err != nil {
		return store.OAuthLink{}, mapErr(err, "get oauth link")
	}
	return toOAuth(row), nil
}

// ListOAuthLinks implements store.Store.
func (s *Store) ListOAuthLinks(ctx context.Context, userID string) ([]store.OAuthLink, error) {
	rows, err := s.qr.ListOAuthLinks(ctx, userID)
	if err != nil {
		return nil, mapErr(err, "list oauth links")
	}
	out := make([]store.OAuthLink, 0, len(rows))
	for _, r := range rows {
		out = append(out, toOAuth(r))
	}
	return out, nil
}

// UnlinkOAuth implements store.Store.
func (s *Store) UnlinkOAuth(ctx context.Context, userID, provider string) error {
	n, err := s.qw.UnlinkOAuth(ctx, db.UnlinkOAuthParams{UserID: userID, Provider: provider})
	return one(n, err, "unlink oauth")
}

// ---- hosts ----

func toHost(h db.Host) store.Host {
	return store.Host{
		ID: h.ID, TeamID: str(h.TeamID), Address: h.Address, Status: store.HostStatus(h.Status),
		CredentialHash: h.CredentialHash, VCPUs: h.Vcpus, MemoryMB: h.MemoryMb, DiskMB: h.DiskMb,
		UsedVCPUs: h.UsedVcpus, UsedMemoryMB: h.UsedMemoryMb, UsedDiskMB: h.UsedDiskMb,
		CPUOvercommit: h.CpuOvercommit, MemoryOvercommit: h.MemoryOvercommit, DiskOvercommit: h.DiskOvercommit,
		Capabilities: h.Capabilities, Drain: h.Drain, DrainReport: h.DrainReport,
		LastHeartbeatAt: tmp(h.LastHeartbeatAt), CreatedAt: tm(h.CreatedAt), UpdatedAt: tm(h.UpdatedAt),
	}
}

func toHosts(rows []db.Host) []store.Host {
	out := make([]store.Host, 0, len(rows))
	for _, r := range rows {
		out = append(out, toHost(r))
	}
	return out
}

// CreateHostToken implements store.Store.
func (s *Store) CreateHostToken(ctx context.Context, tok store.HostToken) error {
	err := s.qw.CreateHostToken(ctx, db.CreateHostTokenParams{
		TokenHash: tok.TokenHash, TeamID: strp(tok.TeamID), CreatedBy: strp(tok.CreatedBy),
		CreatedAt: ts(store.Now()), ExpiresAt: ts(store.Truncate(tok.ExpiresAt)),
	})
	return mapErr(err, "create host token")
}

// RegisterHost implements store.Store.
func (s *Store) RegisterHost(ctx context.Context, tokenHash string, h store.Host) (store.Host, error) {
	if h.ID == "" {
		h.ID = store.NewID(store.PrefixHost)
	}
	var out store.Host
	err := s.tx(ctx, func(q *db.Queries) error {
		now := store.Now()
		tok, err := q.ConsumeHostToken(ctx, db.ConsumeHostTokenParams{TokenHash: tokenHash, HostID: &h.ID, Now: tsp(&now)})
		if err != nil {
			err = mapErr(err, "register host: token")
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("register host: token unknown, used or expired: %w", store.ErrNotFound)
			}
			return err
		}
		row, err := q.InsertHost(ctx, db.InsertHostParams{
			ID: h.ID, TeamID: tok.TeamID, Address: h.Address, CredentialHash: h.CredentialHash,
			Vcpus: h.VCPUs, MemoryMb: h.MemoryMB, DiskMb: h.DiskMB, CreatedAt: tsp(&now),
		})
		if err != nil {
			return mapErr(err, "register host")
		}
		out = toHost(row)
		return nil
	})
	return out, err
}

// GetHost implements store.Store.
func (s *Store) GetHost(ctx context.Context, id string) (store.Host, error) {
	row, err := s.qr.GetHost(ctx, id)
	if err != nil {
		return store.Host{}, mapErr(err, "get host")
	}
	return toHost(row), nil
}

// GetHostByCredentialHash implements store.Store.
func (s *Store) GetHostByCredentialHash(ctx context.Context, hash string) (store.Host, error) {
	row, err := s.qr.GetHostByCredentialHash(ctx, hash)
	if err != nil {
		return store.Host{}, mapErr(err, "get host by credential")
	}
	return toHost(row), nil
}

// ListHosts implements store.Store.
func (s *Store) ListHosts(ctx context.Context) ([]store.Host, error) {
	rows, err := s.qr.ListHosts(ctx)
	if err != nil {
		return nil, mapErr(err, "list hosts")
	}
	return toHosts(rows), nil
}

// ListSchedulableHosts implements store.Store.
func (s *Store) ListSchedulableHosts(ctx context.Context, teamID string, byoc bool) ([]store.Host, error) {
	var rows []db.Host
	var err error
	if byoc {
		rows, err = s.qr.ListOnlineTeamHosts(ctx, &teamID)
	} else {
		rows, err = s.qr.ListOnlineSharedHosts(ctx)
	}
	if err != nil {
		return nil, mapErr(err, "list schedulable hosts")
	}
	hosts := toHosts(rows)
	placed, err := s.qr.ListPlacementsSinceHeartbeat(ctx)
	if err != nil {
		return nil, mapErr(err, "list placements since heartbeat")
	}
	byHost := map[string][]store.Placement{}
	for _, p := range placed {
		if p.HostID != nil {
			byHost[*p.HostID] = append(byHost[*p.HostID], store.Placement{CapsuleID: p.ID, VCPUs: p.Vcpus, MemoryMB: p.MemoryMb, DiskMB: p.DiskSizeMb})
		}
	}
	for i := range hosts {
		hosts[i].Placed = byHost[hosts[i].ID]
	}
	return hosts, nil
}

// HostHeartbeat implements store.Store.
func (s *Store) HostHeartbeat(ctx context.Context, id string, u store.HostUsage) (store.Host, error) {
	now := store.Now()
	row, err := s.qw.HostHeartbeat(ctx, db.HostHeartbeatParams{
		ID: id, Address: u.Address, Vcpus: u.VCPUs, MemoryMb: u.MemoryMB, DiskMb: u.DiskMB,
		UsedVcpus: u.UsedVCPUs, UsedMemoryMb: u.UsedMemoryMB, UsedDiskMb: u.UsedDiskMB, Now: tsp(&now),
		CpuOvercommit: u.CPUOvercommit, MemoryOvercommit: u.MemoryOvercommit, DiskOvercommit: u.DiskOvercommit,
		Capabilities: capabilitiesJSON(u.Capabilities),
	})
	if err != nil {
		return store.Host{}, mapErr(err, "host heartbeat")
	}
	return toHost(row), nil
}

func capabilitiesJSON(c string) string {
	if c == "" {
		return "{}"
	}
	return c
}

// MarkStaleHostsUnavailable implements store.Store.
func (s *Store) MarkStaleHostsUnavailable(ctx context.Context, staleBefore time.Time) ([]string, error) {
	sb := store.Truncate(staleBefore)
	ids, err := s.qw.MarkStaleHostsUnavailable(ctx, db.MarkStaleHostsUnavailableParams{Now: ts(store.Now()), StaleBefore: tsp(&sb)})
	return ids, mapErr(err, "mark stale hosts")
}

// SetHostCapabilities implements store.Store.
func (s *Store) SetHostCapabilities(ctx context.Context, id string, u store.HostUsage) error {
	n, err := s.qw.SetHostCapabilities(ctx, db.SetHostCapabilitiesParams{
		ID: id, CpuOvercommit: u.CPUOvercommit, MemoryOvercommit: u.MemoryOvercommit, DiskOvercommit: u.DiskOvercommit,
		Capabilities: capabilitiesJSON(u.Capabilities), Now: ts(store.Now()),
	})
	return one(n, err, "set host capabilities")
}

// SetHostStatus implements store.Store.
func (s *Store) SetHostStatus(ctx context.Context, id string, st store.HostStatus) error {
	n, err := s.qw.SetHostStatus(ctx, db.SetHostStatusParams{ID: id, Status: string(st), Now: ts(store.Now())})
	return one(n, err, "set host status")
}

// SetHostDrain implements store.Store.
func (s *Store) SetHostDrain(ctx context.Context, id, drain, report string) error {
	n, err := s.qw.SetHostDrain(ctx, db.SetHostDrainParams{ID: id, Drain: drain, DrainReport: report, Now: ts(store.Now())})
	return one(n, err, "set host drain")
}

// DeleteHost implements store.Store.
func (s *Store) DeleteHost(ctx context.Context, id string) error {
	n, err := s.qw.DeleteHost(ctx, id)
	return one(n, err, "delete host")
}

// ---- templates ----

func toTemplate(t db.Template) store.Template {
	return store.Template{
		ID: t.ID, TeamID: t.TeamID, Name: t.Name, Public: t.Public, SizeBytes: t.SizeBytes, HostID: str(t.HostID),
		Checksum: str(t.Checksum), Memory: t.Memory, SourceCapsuleID: str(t.SourceCapsuleID),
		CapsuleInternet: t.CapsuleInternet, Isolation: str(t.Isolation), CreatedAt: tm(t.CreatedAt), UpdatedAt: tm(t.UpdatedAt),
		Lifecycle: store.LifecycleDefaults{OnTimeout: t.OnTimeout, AutoResume: t.AutoResume},
	}
}

func toTemplates(rows []db.Template) []store.Template {
	out := make([]store.Template, 0, len(rows))
	for _, r := range rows {
		out = append(out, toTemplate(r))
	}
	return out
}

// CreateTemplate implements store.Store.
func (s *Store) CreateTemplate(ctx context.Context, t store.Template) (store.Template, error) {
	if t.ID == "" {
		t.ID = store.NewID(store.PrefixTemplate)
	}
	row, err := s.qw.CreateTemplate(ctx, db.CreateTemplateParams{
		ID: t.ID, TeamID: t.TeamID, Name: t.Name, Public: t.Public, SizeBytes: t.SizeBytes, HostID: strp(t.HostID),
		Checksum: strp(t.Checksum), Memory: t.Memory, SourceCapsuleID: strp(t.SourceCapsuleID), CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.Template{}, mapErr(err, "create template")
	}
	return toTemplate(row), nil
}

// GetTemplate implements store.Store.
func (s *Store) GetTemplate(ctx context.Context, teamID, id string) (store.Template, error) {
	row, err := s.qr.GetTemplate(ctx, db.GetTemplateParams{TeamID: teamID, ID: id})
	if err != nil {
		return store.Template{}, mapErr(err, "get template")
	}
	return toTemplate(row), nil
}

// GetTemplateByName implements store.Store.
func (s *Store) GetTemplateByName(ctx context.Context, teamID, name string) (store.Template, error) {
	row, err := s.qr.GetTemplateByName(ctx, db.GetTemplateByNameParams{TeamID: teamID, Name: name})
	if err != nil {
		return store.Template{}, mapErr(err, "get template by name")
	}
	return toTemplate(row), nil
}

// ListTemplates implements store.Store.
func (s *Store) ListTemplates(ctx context.Context, teamID string) ([]store.Template, error) {
	rows, err := s.qr.ListTemplates(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list templates")
	}
	return toTemplates(rows), nil
}

// AdminListTemplates implements store.Store.
func (s *Store) AdminListTemplates(ctx context.Context) ([]store.Template, error) {
	rows, err := s.qr.ListAllTemplates(ctx)
	if err != nil {
		return nil, mapErr(err, "list all templates")
	}
	return toTemplates(rows), nil
}

// SetTemplateSize implements store.Store.
func (s *Store) SetTemplateSize(ctx context.Context, teamID, id string, sizeBytes int64) error {
	n, err := s.qw.UpdateTemplateSize(ctx, db.UpdateTemplateSizeParams{TeamID: teamID, ID: id, SizeBytes: sizeBytes, UpdatedAt: ts(store.Now())})
	return one(n, err, "set template size")
}

// SetTemplateCapsuleInternet implements store.Store.
func (s *Store) SetTemplateCapsuleInternet(ctx context.Context, teamID, id string, v *bool) error {
	n, err := s.qw.SetTemplateCapsuleInternet(ctx, db.SetTemplateCapsuleInternetParams{
		TeamID: teamID, ID: id, CapsuleInternet: v, UpdatedAt: ts(store.Now()),
	})
	return one(n, err, "set template capsule internet")
}

// SetTemplateIsolation implements store.Store.
func (s *Store) SetTemplateIsolation(ctx context.Context, teamID, id, isolation string) error {
	n, err := s.qw.SetTemplateIsolation(ctx, db.SetTemplateIsolationParams{
		TeamID: teamID, ID: id, Isolation: strp(isolation), UpdatedAt: ts(store.Now()),
	})
	return one(n, err, "set template isolation")
}

// DeleteTemplate implements store.Store.
func (s *Store) DeleteTemplate(ctx context.Context, teamID, id string) error {
	n, err := s.qw.DeleteTemplate(ctx, db.DeleteTemplateParams{TeamID: teamID, ID: id})
	return one(n, err, "delete template")
}

// ---- builds ----

func toBuild(b db.Build) store.Build {
	return store.Build{
		ID: b.ID, TeamID: b.TeamID, TemplateName: b.TemplateName, TemplateID: str(b.TemplateID),
		Status: store.BuildStatus(b.Status), Spec: b.Spec, Error: b.Error, CreatedBy: str(b.CreatedBy),
		CreatedAt: tm(b.CreatedAt), UpdatedAt: tm(b.UpdatedAt), FinishedAt: tmp(b.FinishedAt),
	}
}

func toBuilds(rows []db.Build) []store.Build {
	out := make([]store.Build, 0, len(rows))
	for _, r := range rows {
		out = append(out, toBuild(r))
	}
	return out
}

// CreateBuild implements store.Store.
func (s *Store) CreateBuild(ctx context.Context, b store.Build) (store.Build, error) {
	if b.ID == "" {
		b.ID = store.NewID(store.PrefixBuild)
	}
	spec := b.Spec
	if len(spec) == 0 {
		spec = []byte("{}")
	}
	row, err := s.qw.CreateBuild(ctx, db.CreateBuildParams{
		ID: b.ID, TeamID: b.TeamID, TemplateName: b.TemplateName, TemplateID: strp(b.TemplateID),
		Spec: spec, CreatedBy: strp(b.CreatedBy), CreatedAt: ts(store.Now()),
	})
	if err != nil {
		return store.Build{}, mapErr(err, "create build")
	}
	return toBuild(row), nil
}

// GetBuild implements store.Store.
func (s *Store) GetBuild(ctx context.Context, teamID, id string) (store.Build, error) {
	row, err := s.qr.GetBuild(ctx, db.GetBuildParams{TeamID: teamID, ID: id})
	if err != nil {
		return store.Build{}, mapErr(err, "get build")
	}
	return toBuild(row), nil
}

// ListBuilds implements store.Store.
func (s *Store) ListBuilds(ctx context.Context, teamID string) ([]store.Build, error) {
	rows, err := s.qr.ListBuilds(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list builds")
	}
	return toBuilds(rows), nil
}

// AdminListBuilds implements store.Store.
func (s *Store) AdminListBuilds(ctx context.Context) ([]store.Build, error) {
	rows, err := s.qr.ListAllBuilds(ctx)
	if err != nil {
		return nil, mapErr(err, "list all builds")
	}
	return toBuilds(rows), nil
}

// UpdateBuildStatus implements store.Store. Each from-state is tried with
// its own conditional statement; a build is in one state at a time, so at
// most one applies.
func (s *Store) UpdateBuildStatus(ctx context.Context, teamID, id string, from []store.BuildStatus, to store.BuildStatus, errMsg, templateID string) (bool, error) {
	now := store.Now()
	var finished *time.Time
	switch to {
	case store.BuildSucceeded, store.BuildFailed, store.BuildCancelled:
		finished = &now
	}
	for _, f := range from {
		n, err := s.qw.UpdateBuildStatus(ctx, db.UpdateBuildStatusParams{
			TeamID: teamID, ID: id, FromStatus: string(f), ToStatus: string(to), Error: errMsg,
			TemplateID: strp(templateID), Now: ts(now), FinishedAt: tsp(finished),
		})
		if err != nil {
			return false, mapErr(err, "update build status")
		}
		if n > 0 {
			return true, nil
		}
	}
	return false, nil
}

// TouchBuild implements store.Store.
func (s *Store) TouchBuild(ctx context.Context, teamID, id string) (bool, error) {
	n, err := s.qw.TouchBuild(ctx, db.TouchBuildParams{TeamID: teamID, ID: id, Now: ts(store.Now())})
	if err != nil {
		return false, mapErr(err, "touch build")
	}
	return n > 0, nil
}

// AppendBuildLogs implements store.Store.
func (s *Store) AppendBuildLogs(ctx context.Context, buildID string, recs []store.BuildLog) error {
	return s.tx(ctx, func(q *db.Queries) error {
		for _, r := range recs {
			if err := q.AppendBuildLog(ctx, db.AppendBuildLogParams{
				BuildID: buildID, Seq: r.Seq, CreatedAt: ts(r.Time), Step: int64(r.Step), Stream: r.Stream, Data: r.Data,
			}); err != nil {
				return mapErr(err, "append build log")
			}
		}
		return nil
	})
}

// ListBuildLogs implements store.Store.
func (s *Store) ListBuildLogs(ctx context.Context, buildID string, afterSeq int64, limit int) ([]store.BuildLog, error) {
	rows, err := s.qr.ListBuildLogs(ctx, db.ListBuildLogsParams{BuildID: buildID, AfterSeq: afterSeq, MaxRows: lim(limit)})
	if err != nil {
		return nil, mapErr(err, "list build logs")
	}
	out := make([]store.BuildLog, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.BuildLog{Seq: r.Seq, Time: tm(r.CreatedAt), Step: int(r.Step), Stream: r.Stream, Data: r.Data})
	}
	return out, nil
}

// TrimBuildLogs implements store.Store.
func (s *Store) TrimBuildLogs(ctx context.Context, buildID string, beforeSeq int64) error {
	if err := s.qw.TrimBuildLogs(ctx, db.TrimBuildLogsParams{BuildID: buildID, BeforeSeq: beforeSeq}); err != nil {
		return mapErr(err, "trim build logs")
	}
	return nil
}

// ---- capsules ----

func toCapsule(c db.Capsule) (store.Capsule, error) {
	var env map[string]string
	if len(c.Env) > 0 {
		if err := json.Unmarshal(c.Env, &env); err != nil {
			return store.Capsule{}, fmt.Errorf("capsule %s: decode env: %w", c.ID, err)
		}
	}
	var md map[string]string
	if len(c.Metadata) > 0 {
		if err := json.Unmarshal(c.Metadata, &md); err != nil {
			return store.Capsule{}, fmt.Errorf("capsule %s: decode metadata: %w", c.ID, err)
		}
	}
	if len(md) == 0 {
		md = nil
	}
	var nw *store.CapsuleNetwork
	if len(c.Network) > 0 {
		if err := json.Unmarshal(c.Network, &nw); err != nil {
			return store.Capsule{}, fmt.Errorf("capsule %s: decode network: %w", c.ID, err)
		}
	}
	return store.Capsule{
		Metadata: md,
		Network:  nw,
		ID:       c.ID, TeamID: c.TeamID, TemplateID: c.TemplateID, HostID: str(c.HostID),
		Status: store.CapsuleStatus(c.Status), VCPUs: c.Vcpus, MemoryMB: c.MemoryMb,
		DiskSizeMB: c.DiskSizeMb, TimeoutSec: c.TimeoutSec, ExpiresAt: tmp(c.ExpiresAt), Env: env,
		Public: c.Public, AccessTokenHash: c.AccessTokenHash, CreatedBy: str(c.CreatedBy),
		CreatedAt: tm(c.CreatedAt), UpdatedAt: tm(c.UpdatedAt), PausedAt: tmp(c.PausedAt),
		AllowInternet: c.AllowInternet, ErrorReason: c.ErrorReason, Isolation: c.Isolation,
		OnTimeout: c.OnTimeout, AutoResume: c.AutoResume, PauseReason: c.PauseReason,
		MoveRecord: c.MoveRecord,
	}, nil
}

func toCapsules(rows []db.Capsule) ([]store.Capsule, error) {
	out := make([]store.Capsule, 0, len(rows))
	for _, r := range rows {
		c, err := toCapsule(r)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// CreateCapsule implements store.Store. CreatedAt, when set, is kept
// (imports, tests); otherwise it is now.
func (s *Store) CreateCapsule(ctx context.Context, c store.Capsule) (store.Capsule, error) {
	if c.ID == "" {
		c.ID = store.NewID(store.PrefixCapsule)
	}
	if c.Status == "" {
		c.Status = store.CapsulePending
	}
	if c.Env == nil {
		c.Env = map[string]string{}
	}
	env, err := json.Marshal(c.Env)
	if err != nil {
		return store.Capsule{}, fmt.Errorf("create capsule: encode env: %w", err)
	}
	if c.Metadata == nil {
		c.Metadata = map[string]string{}
	}
	md, err := json.Marshal(c.Metadata)
	if err != nil {
		return store.Capsule{}, fmt.Errorf("create capsule: encode metadata: %w", err)
	}
	nw, err := encodeNetwork(c.Network)
	if err != nil {
		return store.Capsule{}, fmt.Errorf("create capsule: %w", err)
	}
	created := store.Now()
	if !c.CreatedAt.IsZero() {
		created = store.Truncate(c.CreatedAt)
	}
	var exp *time.Time
	if c.ExpiresAt != nil {
		e := store.Truncate(*c.ExpiresAt)
		exp = &e
	}
	if c.Isolation == "" {
		c.Isolation = store.DefaultIsolation
	}
	row, err := s.qw.CreateCapsule(ctx, db.CreateCapsuleParams{
		ID: c.ID, TeamID: c.TeamID, TemplateID: c.TemplateID, HostID: strp(c.HostID), Status: string(c.Status),
		Vcpus: c.VCPUs, MemoryMb: c.MemoryMB, DiskSizeMb: c.DiskSizeMB, TimeoutSec: c.TimeoutSec,
		ExpiresAt: tsp(exp), Env: env, Public: c.Public, AccessTokenHash: c.AccessTokenHash,
		CreatedBy: strp(c.CreatedBy), CreatedAt: ts(created), AllowInternet: c.AllowInternet, Metadata: md, Network: nw,
		Isolation: c.Isolation,
		OnTimeout: onTimeout(c.OnTimeout), AutoResume: c.AutoResume,
	})
	if err != nil {
		return store.Capsule{}, mapErr(err, "create capsule")
	}
	return toCapsule(row)
}

// GetCapsule implements store.Store.
func (s *Store) GetCapsule(ctx context.Context, teamID, id string) (store.Capsule, error) {
	row, err := s.qr.GetCapsule(ctx, db.GetCapsuleParams{TeamID: teamID, ID: id})
	if err != nil {
		return store.Capsule{}, mapErr(err, "get capsule")
	}
	return toCapsule(row)
}

// GetCapsuleUnscoped implements store.Store.
func (s *Store) GetCapsuleUnscoped(ctx context.Context, id string) (store.Capsule, error) {
	row, err := s.qr.GetCapsuleUnscoped(ctx, id)
	if err != nil {
		return store.Capsule{}, mapErr(err, "get capsule")
	}
	return toCapsule(row)
}

func capsulePage(rows []db.Capsule, limit int, md map[string]string) ([]store.Capsule, string, error) {
	out, err := toCapsules(rows)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) == limit {
		last := out[len(out)-1]
		next = store.EncodeCursor(store.Cursor{Time: last.CreatedAt, StrID: last.ID})
	}
	return store.FilterMetadata(out, md), next, nil
}

// ListCapsules implements store.Store.
func (s *Store) ListCapsules(ctx context.Context, teamID string, f store.CapsuleFilter) ([]store.Capsule, string, error) {
	cur, err := store.DecodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	limit := store.ClampLimit(f.Limit, 100, 1000)
	rows, err := s.qr.ListCapsules(ctx, db.ListCapsulesParams{
		TeamID: teamID, Status: string(f.Status), CursorTs: ts(cur.Time), CursorID: cur.StrID, Lim: lim(limit),
	})
	if err != nil {
		return nil, "", mapErr(err, "list capsules")
	}
	return capsulePage(rows, limit, f.Metadata)
}

// AdminListCapsules implements store.Store.
func (s *Store) AdminListCapsules(ctx context.Context, f store.CapsuleFilter) ([]store.Capsule, string, error) {
	cur, err := store.DecodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	limit := store.ClampLimit(f.Limit, 100, 1000)
	rows, err := s.qr.ListAllCapsules(ctx, db.ListAllCapsulesParams{
		Status: string(f.Status), CursorTs: ts(cur.Time), CursorID: cur.StrID, Lim: lim(limit),
	})
	if err != nil {
		return nil, "", mapErr(err, "list all capsules")
	}
	return capsulePage(rows, limit, f.Metadata)
}

// ListCapsulesByHost implements store.Store.
func (s *Store) ListCapsulesByHost(ctx context.Context, hostID string) ([]store.Capsule, error) {
	rows, err := s.qr.ListCapsulesByHost(ctx, &hostID)
	if err != nil {
		return nil, mapErr(err, "list capsules by host")
	}
	return toCapsules(rows)
}

// ListExpiredCapsules implements store.Store.
func (s *Store) ListExpiredCapsules(ctx context.Context, now time.Time, limit int) ([]store.Capsule, error) {
	n := store.Truncate(now)
	rows, err := s.qr.ListExpiredCapsules(ctx, db.ListExpiredCapsulesParams{Now: tsp(&n), Lim: lim(store.ClampLimit(limit, 100, 10000))})
	if err != nil {
		return nil, mapErr(err, "list expired capsules")
	}
	return toCapsules(rows)
}

// CountCapsulesByStatus implements store.Store.
func (s *Store) CountCapsulesByStatus(ctx context.Context) (map[store.CapsuleStatus]int64, error) {
	rows, err := s.qr.CountCapsulesByStatus(ctx)
	if err != nil {
		return nil, mapErr(err, "count capsules")
	}
	out := make(map[store.CapsuleStatus]int64, len(rows))
	for _, r := range rows {
		out[store.CapsuleStatus(r.Status)] = r.N
	}
	return out, nil
}

// UpdateCapsuleStatus implements store.Store.
func (s *Store) UpdateCapsuleStatus(ctx context.Context, teamID, id string, from, to store.CapsuleStatus) (bool, error) {
	return s.updateCapsuleStatus(ctx, teamID, id, from, to, "")
}

// FailCapsule implements store.Store.
func (s *Store) FailCapsule(ctx context.Context, teamID, id string, from store.CapsuleStatus, reason string) (bool, error) {
	return s.updateCapsuleStatus(ctx, teamID, id, from, store.CapsuleError, reason)
}

func (s *Store) updateCapsuleStatus(ctx context.Context, teamID, id string, from, to store.CapsuleStatus, reason string) (bool, error) {
	now := store.Now()
	var paused *time.Time
	if to.IsPaused() {
		paused = &now
	}
	n, err := s.qw.UpdateCapsuleStatus(ctx, db.UpdateCapsuleStatusParams{
		TeamID: teamID, ID: id, FromStatus: string(from), ToStatus: string(to), Now: ts(now),
		KeepPausedAt: from.IsPaused() && to.IsPaused(), PausedAt: tsp(paused), ErrorReason: reason,
	})
	if err != nil {
		return false, mapErr(err, "update capsule status")
	}
	return n > 0, nil
}

// SetCapsuleHost implements store.Store.
func (s *Store) SetCapsuleHost(ctx context.Context, teamID, id, hostID string) error {
	n, err := s.qw.SetCapsuleHost(ctx, db.SetCapsuleHostParams{TeamID: teamID, ID: id, HostID: strp(hostID), Now: ts(store.Now())})
	return one(n, err, "set capsule host")
}

// SetCapsuleMoveRecord implements store.Store.
func (s *Store) SetCapsuleMoveRecord(ctx context.Context, teamID, id, record string) error {
	n, err := s.qw.SetCapsuleMoveRecord(ctx, db.SetCapsuleMoveRecordParams{TeamID: teamID, ID: id, MoveRecord: record})
	return one(n, err, "set capsule move record")
}

// MoveCapsuleHost implements store.Store.
func (s *Store) MoveCapsuleHost(ctx context.Context, teamID, id, fromHost, toHost string, status store.CapsuleStatus) (bool, error) {
	n, err := s.qw.MoveCapsuleHost(ctx, db.MoveCapsuleHostParams{
		TeamID: teamID, ID: id, FromHost: strp(fromHost), ToHost: strp(toHost), Status: string(status), Now: ts(store.Now()),
	})
	if err != nil {
		return false, mapErr(err, "move capsule host")
	}
	return n == 1, nil
}

// SetCapsuleTimeout implements store.Store.
func (s *Store) SetCapsuleTimeout(ctx context.Context, teamID, id string, timeoutSec int64, expiresAt *time.Time) error {
	var exp *time.Time
	if expiresAt != nil {
		e := store.Truncate(*expiresAt)
		exp = &e
	}
	n, err := s.qw.SetCapsuleExpiry(ctx, db.SetCapsuleExpiryParams{
		TeamID: teamID, ID: id, TimeoutSec: timeoutSec, ExpiresAt: tsp(exp), Now: ts(store.Now()),
	})
	return one(n, err, "set capsule timeout")
}

// SetCapsulePublic implements store.Store.
func (s *Store) SetCapsulePublic(ctx context.Context, teamID, id string, public bool) error {
	n, err := s.qw.SetCapsulePublic(ctx, db.SetCapsulePublicParams{TeamID: teamID, ID: id, Public: public, Now: ts(store.Now())})
	return one(n, err, "set capsule public")
}

// encodeNetwork is a capsule's network column (NULL for the defaults).
func encodeNetwork(n *store.CapsuleNetwork) ([]byte, error) {
	if n.IsZero() {
		return nil, nil
	}
	b, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode network: %w", err)
	}
	return b, nil
}

// SetCapsuleNetwork implements store.Store.
func (s *Store) SetCapsuleNetwork(ctx context.Context, teamID, id string, allowInternet bool, n *store.CapsuleNetwork) error {
	nw, err := encodeNetwork(n)
	if err != nil {
		return err
	}
	c, err := s.qw.SetCapsuleNetwork(ctx, db.SetCapsuleNetworkParams{TeamID: teamID, ID: id, AllowInternet: allowInternet, Network: nw, Now: ts(store.Now())})
	return one(c, err, "set capsule network")
}

// DeleteCapsule implements store.Store.
func (s *Store) DeleteCapsule(ctx context.Context, teamID, id string) error {
	n, err := s.qw.DeleteCapsule(ctx, db.DeleteCapsuleParams{TeamID: teamID, ID: id})
	return one(n, err, "delete capsule")
}

// ---- audit log ----

func toAudit(a db.AuditLog) store.AuditLog {
	return store.AuditLog{
		ID: a.ID, TeamID: a.TeamID, ActorType: store.ActorType(a.ActorType), ActorID: a.ActorID,
		ActorName: a.ActorName, ResourceType: a.ResourceType, ResourceID: a.ResourceID, Action: a.Action,
		Status: store.AuditStatus(a.Status), Scope: store.AuditScope(a.Scope), Metadata: a.Metadata,
		CreatedAt: tm(a.CreatedAt),
	}
}

// InsertAuditLog implements store.Store. CreatedAt, when zero, is now.
func (s *Store) InsertAuditLog(ctx context.Context, e store.AuditLog) (store.AuditLog, error) {
	if e.CreatedAt.IsZero() {
		e.CreatedAt = store.Now()
	}
	e.CreatedAt = store.Truncate(e.CreatedAt)
	if len(e.Metadata) == 0 {
		e.Metadata = []byte("{}")
	}
	if e.Status == "" {
		e.Status = store.AuditSuccess
	}
	if e.Scope == "" {
		e.Scope = store.ScopeTeam
	}
	id, err := s.qw.InsertAuditLog(ctx, db.InsertAuditLogParams{
		TeamID: e.TeamID, ActorType: string(e.ActorType), ActorID: e.ActorID, ActorName: e.ActorName,
		ResourceType: e.ResourceType, ResourceID: e.ResourceID, Action: e.Action, Status: string(e.Status),
		Scope: string(e.Scope), Metadata: e.Metadata, CreatedAt: ts(e.CreatedAt),
	})
	if err != nil {
		return store.AuditLog{}, mapErr(err, "insert audit log")
	}
	e.ID = id
	return e, nil
}

// ListAuditLogs implements store.Store.
func (s *Store) ListAuditLogs(ctx context.Context, f store.AuditFilter) ([]store.AuditLog, string, error) {
	cur, err := store.DecodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	from, to := f.From, f.To
	if from.IsZero() {
		from = store.MinTime
	}
	if to.IsZero() {
		to = store.MaxTime
	}
	limit := store.ClampLimit(f.Limit, 50, 1000)
	all := db.ListAllAuditLogsParams{
		Scope: string(f.Scope), ActorID: f.ActorID, ResourceType: f.ResourceType,
		Action: f.Action, FromTs: ts(store.Truncate(from)), ToTs: ts(store.Truncate(to)),
		CursorTs: ts(cur.Time), CursorID: cur.IntID, Lim: lim(limit),
	}
	var rows []db.AuditLog
	if f.TeamID == "" {
		rows, err = s.qr.ListAllAuditLogs(ctx, all)
	} else {
		// Same filters, plus the team (its own index).
		rows, err = s.qr.ListAuditLogs(ctx, db.ListAuditLogsParams{
			TeamID: f.TeamID, Scope: all.Scope, ActorID: all.ActorID, ResourceType: all.ResourceType,
			Action: all.Action, FromTs: all.FromTs, ToTs: all.ToTs, CursorTs: all.CursorTs, CursorID: all.CursorID, Lim: all.Lim,
		})
	}
	if err != nil {
		return nil, "", mapErr(err, "list audit logs")
	}
	out := make([]store.AuditLog, 0, len(rows))
	for _, r := range rows {
		out = append(out, toAudit(r))
	}
	next := ""
	if len(out) == limit {
		last := out[len(out)-1]
		next = store.EncodeCursor(store.Cursor{Time: last.CreatedAt, IntID: last.ID})
	}
	return out, next, nil
}

// AnonymizeUserAuditLogs implements store.Store.
func (s *Store) AnonymizeUserAuditLogs(ctx context.Context, userID string) (int64, error) {
	n, err := s.qw.AnonymizeUserAuditLogs(ctx, userID)
	return n, mapErr(err, "anonymize audit logs")
}

// ---- usage ----

func toSnapshots(rows []db.CapsuleMetricSnapshot) []store.MetricSnapshot {
	out := make([]store.MetricSnapshot, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.MetricSnapshot{
			ID: r.ID, CapsuleID: r.CapsuleID, TeamID: r.TeamID, TS: tm(r.Ts), IntervalMS: r.IntervalMs,
			CPUCores: r.CpuCores, MemBytes: r.MemBytes,
		})
	}
	return out
}

// InsertMetricSnapshots implements store.Store; the batch is one transaction.
func (s *Store) InsertMetricSnapshots(ctx context.Context, snaps []store.MetricSnapshot) error {
	if len(snaps) == 0 {
		return nil
	}
	return s.tx(ctx, func(q *db.Queries) error {
		for _, m := range snaps {
			err := q.InsertMetricSnapshot(ctx, db.InsertMetricSnapshotParams{
				CapsuleID: m.CapsuleID, TeamID: m.TeamID, Ts: ts(store.Truncate(m.TS)), IntervalMs: m.IntervalMS,
				CpuCores: m.CPUCores, MemBytes: m.MemBytes,
			})
			if err != nil {
				return mapErr(err, "insert metric snapshot")
			}
		}
		return nil
	})
}

// ListCapsuleMetricSnapshots implements store.Store.
func (s *Store) ListCapsuleMetricSnapshots(ctx context.Context, teamID, capsuleID string, from, to time.Time) ([]store.MetricSnapshot, error) {
	rows, err := s.qr.ListCapsuleMetricSnapshots(ctx, db.ListCapsuleMetricSnapshotsParams{
		TeamID: teamID, CapsuleID: capsuleID, FromTs: ts(store.Truncate(from)), ToTs: ts(store.Truncate(to)),
	})
	if err != nil {
		return nil, mapErr(err, "list capsule metrics")
	}
	return toSnapshots(rows), nil
}

// ListTeamMetricSnapshots implements store.Store.
func (s *Store) ListTeamMetricSnapshots(ctx context.Context, teamID string, from, to time.Time) ([]store.MetricSnapshot, error) {
	rows, err := s.qr.ListTeamMetricSnapshots(ctx, db.ListTeamMetricSnapshotsParams{
		TeamID: teamID, FromTs: ts(store.Truncate(from)), ToTs: ts(store.Truncate(to)),
	})
	if err != nil {
		return nil, mapErr(err, "list team metrics")
	}
	return toSnapshots(rows), nil
}

// ListTeamsWithMetricSnapshots implements store.Store.
func (s *Store) ListTeamsWithMetricSnapshots(ctx context.Context, from, to time.Time) ([]string, error) {
	ids, err := s.qr.ListTeamsWithMetricSnapshots(ctx, db.ListTeamsWithMetricSnapshotsParams{
		FromTs: ts(store.Truncate(from)), ToTs: ts(store.Truncate(to)),
	})
	return ids, mapErr(err, "list teams with metrics")
}

// DeleteMetricSnapshotsBefore implements store.Store.
func (s *Store) DeleteMetricSnapshotsBefore(ctx context.Context, before time.Time) (int64, error) {
	n, err := s.qw.DeleteMetricSnapshotsBefore(ctx, ts(store.Truncate(before)))
	return n, mapErr(err, "delete metric snapshots")
}

// SumUsage implements store.Store.
func (s *Store) SumUsage(ctx context.Context, teamID string, from, to time.Time) ([]store.UsageSum, error) {
	rows, err := s.qr.SumUsage(ctx, db.SumUsageParams{TeamID: teamID, FromTs: ts(store.Truncate(from)), ToTs: ts(store.Truncate(to))})
	if err != nil {
		return nil, mapErr(err, "sum usage")
	}
	out := make([]store.UsageSum, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.UsageSum{TeamID: r.TeamID, CPUMinutes: r.CpuMinutes, RAMMBMinutes: r.RamMbMinutes})
	}
	return out, nil
}

// UpsertDailyUsage implements store.Store; the batch is one transaction.
func (s *Store) UpsertDailyUsage(ctx context.Context, rows []store.DailyUsage) error {
	if len(rows) == 0 {
		return nil
	}
	now := store.Now()
	return s.tx(ctx, func(q *db.Queries) error {
		for _, r := range rows {
			err := q.UpsertDailyUsage(ctx, db.UpsertDailyUsageParams{
				TeamID: r.TeamID, Day: dayv(r.Day), CpuMinutes: r.CPUMinutes, RamMbMinutes: r.RAMMBMinutes,
				UpdatedAt: ts(now),
			})
			if err != nil {
				return mapErr(err, "upsert daily usage")
			}
		}
		return nil
	})
}

// ListDailyUsage implements store.Store.
func (s *Store) ListDailyUsage(ctx context.Context, teamID string, from, to time.Time) ([]store.DailyUsage, error) {
	rows, err := s.qr.ListDailyUsage(ctx, db.ListDailyUsageParams{TeamID: teamID, FromDay: dayv(from), ToDay: dayv(to)})
	if err != nil {
		return nil, mapErr(err, "list daily usage")
	}
	out := make([]store.DailyUsage, 0, len(rows))
	for _, r := range rows {
		d, err := dayt(r.Day)
		if err != nil {
			return nil, err
		}
		out = append(out, store.DailyUsage{
			TeamID: r.TeamID, Day: d, CPUMinutes: r.CpuMinutes, RAMMBMinutes: r.RamMbMinutes, UpdatedAt: tm(r.UpdatedAt),
		})
	}
	return out, nil
}

// ---- leases ----

// TryLease implements store.Store: one conditional upsert, atomic under
// concurrent replicas.
func (s *Store) TryLease(ctx context.Context, name, holder string, now, expiresAt time.Time) (bool, error) {
	rows, err := s.qw.TryLease(ctx, db.TryLeaseParams{Name: name, Holder: holder, Now: ts(now), ExpiresAt: ts(expiresAt)})
	if err != nil {
		return false, mapErr(err, "try lease")
	}
	return len(rows) == 1, nil
}

// ReleaseLease implements store.Store.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := s.qw.ReleaseLease(ctx, db.ReleaseLeaseParams{Name: name, Holder: holder}); err != nil {
		return mapErr(err, "release lease")
	}
	return nil
}

// ---- capsule life cycle (docs/LIFECYCLE.md) ----

// onTimeout is the stored on_timeout ("" is kill).
func onTimeout(v string) string {
	if v == "" {
		return store.OnTimeoutKill
	}
	return v
}

// SetCapsuleLifecycle implements store.Store.
func (s *Store) SetCapsuleLifecycle(ctx context.Context, teamID, id, onTimeoutV string, autoResume bool) error {
	n, err := s.qw.SetCapsuleLifecycle(ctx, db.SetCapsuleLifecycleParams{
		TeamID: teamID, ID: id, OnTimeout: onTimeout(onTimeoutV), AutoResume: autoResume, Now: ts(store.Now()),
	})
	return one(n, err, "set capsule lifecycle")
}

// SetCapsulePauseReason implements store.Store.
func (s *Store) SetCapsulePauseReason(ctx context.Context, teamID, id, reason string) error {
	n, err := s.qw.SetCapsulePauseReason(ctx, db.SetCapsulePauseReasonParams{TeamID: teamID, ID: id, PauseReason: reason, Now: ts(store.Now())})
	return one(n, err, "set capsule pause reason")
}

// ListTimedOutPausable implements store.Store.
func (s *Store) ListTimedOutPausable(ctx context.Context, now time.Time, limit int) ([]store.Capsule, error) {
	n := store.Truncate(now)
	rows, err := s.qr.ListTimedOutPausable(ctx, db.ListTimedOutPausableParams{Now: tsp(&n), Lim: lim(store.ClampLimit(limit, 100, 10000))})
	if err != nil {
		return nil, mapErr(err, "list timed-out pausable capsules")
	}
	return toCapsules(rows)
}

// ListRetentionExpired implements store.Store.
func (s *Store) ListRetentionExpired(ctx context.Context, before time.Time, limit int) ([]store.Capsule, error) {
	b := store.Truncate(before)
	rows, err := s.qr.ListRetentionExpired(ctx, db.ListRetentionExpiredParams{Before: tsp(&b), Lim: lim(store.ClampLimit(limit, 100, 10000))})
	if err != nil {
		return nil, mapErr(err, "list retention-expired capsules")
	}
	return toCapsules(rows)
}

// SetTemplateLifecycle implements store.Store.
func (s *Store) SetTemplateLifecycle(ctx context.Context, teamID, id string, d store.LifecycleDefaults) error {
	n, err := s.qw.SetTemplateLifecycle(ctx, db.SetTemplateLifecycleParams{
		TeamID: teamID, ID: id, OnTimeout: d.OnTimeout, AutoResume: d.AutoResume, UpdatedAt: ts(store.Now()),
	})
	return one(n, err, "set template lifecycle")
}

// SetTeamLifecycle implements store.Store.
func (s *Store) SetTeamLifecycle(ctx context.Context, id string, d store.LifecycleDefaults) error {
	n, err := s.qw.SetTeamLifecycle(ctx, db.SetTeamLifecycleParams{ID: id, OnTimeout: d.OnTimeout, AutoResume: d.AutoResume, UpdatedAt: ts(store.Now())})
	return one(n, err, "set team lifecycle")
}

// ---- events, webhooks and the webhook outbox (migration 15) ----

func toEvent(e db.Event) store.Event {
	return store.Event{ID: e.ID, TeamID: e.TeamID, Type: e.Type, Subject: e.Subject, CreatedAt: tm(e.CreatedAt), Data: e.Data}
}

func toEvents(rows []db.Event) []store.Event {
	out := make([]store.Event, 0, len(rows))
	for _, r := range rows {
		out = append(out, toEvent(r))
	}
	return out
}

// AppendEvent implements store.Store.
func (s *Store) AppendEvent(ctx context.Context, e store.Event, hooks []string, bodyFor func(store.Event) ([]byte, error)) (store.Event, error) {
	if e.CreatedAt.IsZero() {
		e.CreatedAt = store.Now()
	}
	e.CreatedAt = store.Truncate(e.CreatedAt)
	if len(e.Data) == 0 {
		e.Data = []byte("{}")
	}
	err := s.retry(ctx, func() error {
		return s.tx(ctx, func(q *db.Queries) error {
			id, err := q.InsertEvent(ctx, db.InsertEventParams{
				TeamID: e.TeamID, Type: e.Type, Subject: e.Subject, CreatedAt: ts(e.CreatedAt), Data: e.Data,
			})
			if err != nil {
				return mapErr(err, "insert event")
			}
			e.ID = id
			if len(hooks) == 0 {
				return nil
			}
			body, err := bodyFor(e)
			if err != nil {
				return err
			}
			for _, h := range hooks {
				_, err := q.InsertWebhookDelivery(ctx, db.InsertWebhookDeliveryParams{
					WebhookID: h, TeamID: e.TeamID, EventID: e.ID, EventType: e.Type, Body: body,
					NextAttemptAt: ts(e.CreatedAt), CreatedAt: ts(e.CreatedAt),
				})
				if err != nil {
					return mapErr(err, "queue webhook delivery")
				}
			}
			return nil
		})
	})
	if err != nil {
		return store.Event{}, err
	}
	return e, nil
}

// ListEvents implements store.Store.
func (s *Store) ListEvents(ctx context.Context, teamID string, f store.EventFilter) ([]store.Event, error) {
	rows, err := s.qr.ListTeamEvents(ctx, db.ListTeamEventsParams{
		TeamID: teamID, AfterID: f.AfterID, Type: f.Type, Subject: f.Subject, Lim: lim(store.ClampLimit(f.Limit, 100, 1000)),
	})
	if err != nil {
		return nil, mapErr(err, "list events")
	}
	return toEvents(rows), nil
}

// ListEventsAfter implements store.Store.
func (s *Store) ListEventsAfter(ctx context.Context, afterID int64, limit int) ([]store.Event, error) {
	rows, err := s.qr.ListAllEventsAfter(ctx, db.ListAllEventsAfterParams{AfterID: afterID, Lim: lim(store.ClampLimit(limit, 500, 5000))})
	if err != nil {
		return nil, mapErr(err, "list events after")
	}
	return toEvents(rows), nil
}

// LastEventID implements store.Store.
func (s *Store) LastEventID(ctx context.Context) (int64, error) {
	id, err := s.qr.LastEventID(ctx)
	return id, mapErr(err, "last event id")
}

// DeleteEventsBefore implements store.Store.
func (s *Store) DeleteEventsBefore(ctx context.Context, t time.Time) (int64, error) {
	n, err := s.qw.DeleteEventsBefore(ctx, ts(store.Truncate(t)))
	return n, mapErr(err, "delete events")
}

func toWebhook(w db.Webhook) (store.Webhook, error) {
	out := store.Webhook{
		ID: w.ID, TeamID: w.TeamID, URL: w.Url, Enabled: w.Enabled, SecretSealed: w.SecretEnc,
		CreatedAt: tm(w.CreatedAt), UpdatedAt: tm(w.UpdatedAt),
	}
	if err := json.Unmarshal(w.EventTypes, &out.EventTypes); err != nil {
		return out, fmt.Errorf("webhook %s: event types: %w", w.ID, err)
	}
	return out, nil
}

func toWebhooks(rows []db.Webhook) ([]store.Webhook, error) {
	out := make([]store.Webhook, 0, len(rows))
	for _, r := range rows {
		w, err := toWebhook(r)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

func eventTypesJSON(types []string) []byte {
	if types == nil {
		types = []string{}
	}
	b, _ := json.Marshal(types)
	return b
}

// CreateWebhook implements store.Store. ID, when empty, is generated.
func (s *Store) CreateWebhook(ctx context.Context, w store.Webhook) (store.Webhook, error) {
	if w.ID == "" {
		w.ID = store.NewID(store.PrefixWebhook)
	}
	w.CreatedAt = store.Now()
	w.UpdatedAt = w.CreatedAt
	if w.EventTypes == nil {
		w.EventTypes = []string{}
	}
	err := s.qw.InsertWebhook(ctx, db.InsertWebhookParams{
		ID: w.ID, TeamID: w.TeamID, Url: w.URL, EventTypes: eventTypesJSON(w.EventTypes), Enabled: w.Enabled,
		SecretEnc: w.SecretSealed, CreatedAt: ts(w.CreatedAt), UpdatedAt: ts(w.UpdatedAt),
	})
	if err != nil {
		return store.Webhook{}, mapErr(err, "create webhook")
	}
	return w, nil
}

// GetWebhook implements store.Store.
func (s *Store) GetWebhook(ctx context.Context, teamID, id string) (store.Webhook, error) {
	r, err := s.qr.GetWebhook(ctx, db.GetWebhookParams{TeamID: teamID, ID: id})
	if err != nil {
		return store.Webhook{}, mapErr(err, "get webhook")
	}
	return toWebhook(r)
}

// GetWebhookUnscoped implements store.Store.
func (s *Store) GetWebhookUnscoped(ctx context.Context, id string) (store.Webhook, error) {
	r, err := s.qr.GetWebhookUnscoped(ctx, id)
	if err != nil {
		return store.Webhook{}, mapErr(err, "get webhook")
	}
	return toWebhook(r)
}

// ListWebhooks implements store.Store.
func (s *Store) ListWebhooks(ctx context.Context, teamID string) ([]store.Webhook, error) {
	rows, err := s.qr.ListWebhooks(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list webhooks")
	}
	return toWebhooks(rows)
}

// ListEnabledWebhooks implements store.Store.
func (s *Store) ListEnabledWebhooks(ctx context.Context, teamID string) ([]store.Webhook, error) {
	rows, err := s.qr.ListEnabledWebhooks(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list enabled webhooks")
	}
	return toWebhooks(rows)
}

// UpdateWebhook implements store.Store (URL, event types, enabled).
func (s *Store) UpdateWebhook(ctx context.Context, w store.Webhook) error {
	n, err := s.qw.UpdateWebhook(ctx, db.UpdateWebhookParams{
		Url: w.URL, EventTypes: eventTypesJSON(w.EventTypes), Enabled: w.Enabled, UpdatedAt: ts(store.Now()),
		TeamID: w.TeamID, ID: w.ID,
	})
	if err != nil {
		return mapErr(err, "update webhook")
	}
	if n == 0 {
		return fmt.Errorf("update webhook: %w", store.ErrNotFound)
	}
	return nil
}

// SetWebhookSecret implements store.Store.
func (s *Store) SetWebhookSecret(ctx context.Context, teamID, id string, sealed []byte) error {
	n, err := s.qw.SetWebhookSecret(ctx, db.SetWebhookSecretParams{SecretEnc: sealed, UpdatedAt: ts(store.Now()), TeamID: teamID, ID: id})
	if err != nil {
		return mapErr(err, "set webhook secret")
	}
	if n == 0 {
		return fmt.Errorf("set webhook secret: %w", store.ErrNotFound)
	}
	return nil
}

// DeleteWebhook implements store.Store (its deliveries go with it).
func (s *Store) DeleteWebhook(ctx context.Context, teamID, id string) error {
	n, err := s.qw.DeleteWebhook(ctx, db.DeleteWebhookParams{TeamID: teamID, ID: id})
	if err != nil {
		return mapErr(err, "delete webhook")
	}
	if n == 0 {
		return fmt.Errorf("delete webhook: %w", store.ErrNotFound)
	}
	return nil
}

func toDelivery(d db.WebhookDelivery) store.WebhookDelivery {
	return store.WebhookDelivery{
		ID: d.ID, WebhookID: d.WebhookID, TeamID: d.TeamID, EventID: d.EventID, EventType: d.EventType, Body: d.Body,
		Status: store.DeliveryStatus(d.Status), Attempts: int(d.Attempts), NextAttemptAt: tm(d.NextAttemptAt),
		LastAttemptAt: tmp(d.LastAttemptAt), ResponseStatus: int(d.ResponseStatus), LastError: d.LastError,
		CreatedAt: tm(d.CreatedAt),
	}
}

func toDeliveries(rows []db.WebhookDelivery) []store.WebhookDelivery {
	out := make([]store.WebhookDelivery, 0, len(rows))
	for _, r := range rows {
		out = append(out, toDelivery(r))
	}
	return out
}

// EnqueueWebhookDelivery implements store.Store.
func (s *Store) EnqueueWebhookDelivery(ctx context.Context, d store.WebhookDelivery) (store.WebhookDelivery, error) {
	d.CreatedAt = store.Now()
	d.NextAttemptAt, d.Status = d.CreatedAt, store.DeliveryPending
	id, err := s.qw.InsertWebhookDelivery(ctx, db.InsertWebhookDeliveryParams{
		WebhookID: d.WebhookID, TeamID: d.TeamID, EventID: d.EventID, EventType: d.EventType, Body: d.Body,
		NextAttemptAt: ts(d.NextAttemptAt), CreatedAt: ts(d.CreatedAt),
	})
	if err != nil {
		return store.WebhookDelivery{}, mapErr(err, "queue webhook delivery")
	}
	d.ID = id
	return d, nil
}

// ListWebhookDeliveries implements store.Store.
func (s *Store) ListWebhookDeliveries(ctx context.Context, teamID, webhookID string, beforeID int64, limit int) ([]store.WebhookDelivery, error) {
	if beforeID <= 0 {
		beforeID = 1<<63 - 1
	}
	rows, err := s.qr.ListWebhookDeliveries(ctx, db.ListWebhookDeliveriesParams{
		TeamID: teamID, WebhookID: webhookID, BeforeID: beforeID, Lim: lim(store.ClampLimit(limit, 50, 500)),
	})
	if err != nil {
		return nil, mapErr(err, "list webhook deliveries")
	}
	return toDeliveries(rows), nil
}

// DueWebhooks implements store.Store.
func (s *Store) DueWebhooks(ctx context.Context, now time.Time, limit int) ([]string, error) {
	ids, err := s.qr.DueWebhooks(ctx, db.DueWebhooksParams{Now: ts(store.Truncate(now)), Lim: lim(store.ClampLimit(limit, 50, 1000))})
	return ids, mapErr(err, "due webhooks")
}

// LeaseWebhook implements store.Store.
func (s *Store) LeaseWebhook(ctx context.Context, id, owner string, now, until time.Time) (bool, error) {
	n, err := s.qw.LeaseWebhook(ctx, db.LeaseWebhookParams{Owner: owner, Until: ts(store.Truncate(until)), ID: id, Now: ts(store.Truncate(now))})
	if err != nil {
		return false, mapErr(err, "lease webhook")
	}
	return n == 1, nil
}

// ReleaseWebhook implements store.Store.
func (s *Store) ReleaseWebhook(ctx context.Context, id, owner string) error {
	return mapErr(s.qw.ReleaseWebhook(ctx, db.ReleaseWebhookParams{Zero: ts(time.Unix(0, 0)), ID: id, Owner: owner}), "release webhook")
}

// PendingWebhookDeliveries implements store.Store.
func (s *Store) PendingWebhookDeliveries(ctx context.Context, webhookID string, limit int) ([]store.WebhookDelivery, error) {
	rows, err := s.qr.PendingWebhookDeliveries(ctx, db.PendingWebhookDeliveriesParams{WebhookID: webhookID, Lim: lim(store.ClampLimit(limit, 50, 500))})
	if err != nil {
		return nil, mapErr(err, "pending webhook deliveries")
	}
	return toDeliveries(rows), nil
}

// FinishWebhookDelivery implements store.Store.
func (s *Store) FinishWebhookDelivery(ctx context.Context, id int64, owner string, o store.DeliveryOutcome) (bool, error) {
	at := store.Truncate(o.AttemptedAt)
	n, err := s.qw.FinishWebhookDelivery(ctx, db.FinishWebhookDeliveryParams{
		Status: string(o.Status), NextAttemptAt: ts(store.Truncate(o.NextAttemptAt)), AttemptedAt: tsp(&at),
		ResponseStatus: int64(o.ResponseStatus), LastError: o.LastError, ID: id, Owner: owner,
	})
	if err != nil {
		return false, mapErr(err, "finish webhook delivery")
	}
	return n == 1, nil
}

// --- volumes (migration 17) ---

func toVolume(v db.Volume) store.Volume {
	return store.Volume{
		ID: v.ID, TeamID: v.TeamID, Name: v.Name, SizeMB: v.SizeMb, CreatedAt: tm(v.CreatedAt), UpdatedAt: tm(v.UpdatedAt),
		Version: v.Version, SnapshotName: v.SnapshotName,
	}
}

// CreateVolume implements store.Store.
func (s *Store) CreateVolume(ctx context.Context, v store.Volume) (store.Volume, error) {
	if v.ID == "" {
		v.ID = store.NewID(store.PrefixVolume)
	}
	v.CreatedAt = store.Now()
	v.UpdatedAt = v.CreatedAt
	v.Version = 0
	err := s.qw.InsertVolume(ctx, db.InsertVolumeParams{
		ID: v.ID, TeamID: v.TeamID, Name: v.Name, SizeMb: v.SizeMB, CreatedAt: ts(v.CreatedAt), UpdatedAt: ts(v.UpdatedAt),
		SnapshotName: v.SnapshotName,
	})
	if err != nil {
		return store.Volume{}, mapErr(err, "create volume")
	}
	return v, nil
}

// GetVolumeByName implements store.Store.
func (s *Store) GetVolumeByName(ctx context.Context, teamID, name string) (store.Volume, error) {
	r, err := s.qr.GetVolumeByName(ctx, db.GetVolumeByNameParams{TeamID: teamID, Name: name})
	if err != nil {
		return store.Volume{}, mapErr(err, "get volume")
	}
	return toVolume(r), nil
}

// ListVolumes implements store.Store.
func (s *Store) ListVolumes(ctx context.Context, teamID string) ([]store.Volume, error) {
	rows, err := s.qr.ListVolumes(ctx, teamID)
	if err != nil {
		return nil, mapErr(err, "list volumes")
	}
	out := make([]store.Volume, 0, len(rows))
	for _, r := range rows {
		out = append(out, toVolume(r))
	}
	return out, nil
}

func toActiveMounts(rows []db.ActiveVolumeMountsRow) []store.VolumeMount {
	out := make([]store.VolumeMount, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.VolumeMount{
			CapsuleID: r.CapsuleID, VolumeID: r.VolumeID, Path: r.Path, ReadOnly: r.ReadOnly, CreatedAt: tm(r.CreatedAt),
			HostID: r.HostID, CapsuleStatus: store.CapsuleStatus(r.Status),
		})
	}
	return out
}

// DeleteVolume implements store.Store: under the volume's lock, refused
// while an active mount holds it.
func (s *Store) DeleteVolume(ctx context.Context, teamID, id string) error {
	return s.retry(ctx, func() error {
		return s.tx(ctx, func(q *db.Queries) error {
			if _, err := q.LockVolume(ctx, db.LockVolumeParams{TeamID: teamID, ID: id}); err != nil {
				return mapErr(err, "delete volume")
			}
			active, err := q.ActiveVolumeMounts(ctx, id)
			if err != nil {
				return mapErr(err, "delete volume")
			}
			if len(active) > 0 {
				return fmt.Errorf("delete volume: mounted by capsule %s: %w", active[0].CapsuleID, store.ErrConflict)
			}
			if err := q.DeleteVolumeMounts(ctx, id); err != nil {
				return mapErr(err, "delete volume")
			}
			n, err := q.DeleteVolume(ctx, db.DeleteVolumeParams{TeamID: teamID, ID: id})
			if err != nil {
				return mapErr(err, "delete volume")
			}
			if n == 0 {
				return fmt.Errorf("delete volume: %w", store.ErrNotFound)
			}
			return nil
		})
	})
}

// ActiveVolumeMounts implements store.Store.
func (s *Store) ActiveVolumeMounts(ctx context.Context, volumeID string) ([]store.VolumeMount, error) {
	rows, err := s.qr.ActiveVolumeMounts(ctx, volumeID)
	if err != nil {
		return nil, mapErr(err, "list volume mounts")
	}
	return toActiveMounts(rows), nil
}

// AddVolumeMounts implements store.Store: one transaction; each volume's
// row is locked before its active mounts are checked, so two creates can
// never both mount a volume read-write.
func (s *Store) AddVolumeMounts(ctx context.Context, teamID, capsuleID string, mounts []store.VolumeMount) error {
	now := store.Now()
	return s.retry(ctx, func() error {
		return s.tx(ctx, func(q *db.Queries) error {
			host, err := q.CapsuleHost(ctx, db.CapsuleHostParams{TeamID: teamID, ID: capsuleID})
			if err != nil {
				return mapErr(err, "add volume mounts: capsule")
			}
			for _, m := range mounts {
				if _, err := q.LockVolume(ctx, db.LockVolumeParams{TeamID: teamID, ID: m.VolumeID}); err != nil {
					return mapErr(err, "add volume mounts: volume "+m.VolumeID)
				}
				rows, err := q.ActiveVolumeMounts(ctx, m.VolumeID)
				if err != nil {
					return mapErr(err, "add volume mounts")
				}
				for _, a := range rows {
					if a.CapsuleID == capsuleID {
						return fmt.Errorf("add volume mounts: volume %s mounted twice in capsule %s: %w", m.VolumeID, capsuleID, store.ErrConflict)
					}
					if !m.ReadOnly || !a.ReadOnly {
						return fmt.Errorf("add volume mounts: volume %s is mounted read-write by capsule %s or would be twice: %w", m.VolumeID, a.CapsuleID, store.ErrConflict)
					}
					if a.HostID != host {
						return fmt.Errorf("add volume mounts: volume %s is held on host %s: %w", m.VolumeID, a.HostID, store.ErrConflict)
					}
				}
				err = q.InsertVolumeMount(ctx, db.InsertVolumeMountParams{
					CapsuleID: capsuleID, VolumeID: m.VolumeID, Path: m.Path, ReadOnly: m.ReadOnly, CreatedAt: ts(now),
				})
				if err != nil {
					return mapErr(err, "add volume mount")
				}
			}
			return nil
		})
	})
}

// RemoveVolumeMounts implements store.Store.
func (s *Store) RemoveVolumeMounts(ctx context.Context, capsuleID string) error {
	return mapErr(s.qw.DeleteCapsuleVolumeMounts(ctx, capsuleID), "remove volume mounts")
}

// CapsuleVolumeMounts implements store.Store.
func (s *Store) CapsuleVolumeMounts(ctx context.Context, capsuleID string) ([]store.VolumeMount, error) {
	rows, err := s.qr.ListCapsuleVolumeMounts(ctx, capsuleID)
	if err != nil {
		return nil, mapErr(err, "list capsule volume mounts")
	}
	out := make([]store.VolumeMount, 0, len(rows))
	for _, r := range rows {
		out = append(out, store.VolumeMount{
			CapsuleID: r.CapsuleID, VolumeID: r.VolumeID, Path: r.Path, ReadOnly: r.ReadOnly, CreatedAt: tm(r.CreatedAt),
			VolumeName: r.Name, SizeMB: r.SizeMb, SnapshotName: r.SnapshotName,
		})
	}
	return out, nil
}

// BumpVolumeVersion implements store.Store.
func (s *Store) BumpVolumeVersion(ctx context.Context, id string) error {
	return mapErr(s.qw.BumpVolumeVersion(ctx, db.BumpVolumeVersionParams{ID: id, UpdatedAt: ts(store.Now())}), "bump volume version")
}
