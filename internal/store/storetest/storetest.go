// Package storetest is the conformance suite every store.Store passes:
// Run(t, newStore) exercises each method, team isolation, down/up
// migrations with data present, the concurrent last-admin rule, keyset
// pagination under concurrent inserts and idempotent usage upserts. The
// SQLite and PostgreSQL packages run it from their tests; it imports no
// driver.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// NewStore returns an empty, migrated store private to the caller; the
// factory registers its cleanup with tb.
type NewStore func(tb testing.TB) store.Store

// Migrator is implemented by stores whose migrations can be reverted and
// re-applied in place; Run requires it.
type Migrator interface {
	MigrateDownAll(ctx context.Context) error
	MigrateUpAll(ctx context.Context) error
}

// Run runs the suite; each subtest gets a fresh store.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		f    func(t *testing.T, s store.Store)
	}{
		{"Migrations", testMigrations},
		{"Teams", testTeams},
		{"MembersInvites", testMembersInvites},
		{"Users", testUsers},
		{"SoftDeleteUser", testSoftDeleteUser},
		{"AdminGrantRevoke", testAdminGrantRevoke},
		{"LastAdminConcurrent", testLastAdminConcurrent},
		{"UserTokens", testUserTokens},
		{"APIKeys", testAPIKeys},
		{"OAuth", testOAuth},
		{"Hosts", testHosts},
		{"Templates", testTemplates},
		{"Builds", testBuilds},
		{"BuildLogs", testBuildLogs},
		{"Capsules", testCapsules},
		{"CapsulePagination", testCapsulePagination},
		{"CapsuleNetwork", testCapsuleNetwork},
		{"IsolationChoice", testIsolationChoice},
		{"CapsuleLifecycle", testCapsuleLifecycle},
		{"TeamIsolation", testTeamIsolation},
		{"DeleteTeamCascades", testDeleteTeamCascades},
		{"Audit", testAudit},
		{"AuditPaginationConcurrent", testAuditPaginationConcurrent},
		{"Metrics", testMetrics},
		{"DailyUsage", testDailyUsage},
		{"Leases", testLeases},
		{"LeasesConcurrent", testLeasesConcurrent},
		{"Events", testEvents},
		{"WebhookOutbox", testWebhookOutbox},
		{"Volumes", testVolumes},
		{"VolumeMountsConcurrent", testVolumeMountsConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.f(t, newStore(t))
		})
	}
}

// ---- helpers ----

func ctxT(t *testing.T) context.Context { return testutil.Context(t, testutil.Long) }

// must(f())(t) returns f's value, failing t on f's error.
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func newTeam(t *testing.T, s store.Store, name string) store.Team {
	t.Helper()
	return must(s.CreateTeam(ctxT(t), store.Team{Name: name}))(t)
}

func newUser(t *testing.T, s store.Store, email string, admin bool) store.User {
	t.Helper()
	return must(s.CreateUser(ctxT(t), store.User{Email: email, Name: email, PasswordHash: "h", IsAdmin: admin}))(t)
}

func newCapsule(t *testing.T, s store.Store, teamID string, created time.Time) store.Capsule {
	t.Helper()
	return must(s.CreateCapsule(ctxT(t), store.Capsule{
		TeamID: teamID, TemplateID: "tpl-base", Status: store.CapsuleRunning,
		VCPUs: 1, MemoryMB: 512, DiskSizeMB: 5120, TimeoutSec: 300,
		Env: map[string]string{"A": "1"}, AccessTokenHash: "ath", CreatedAt: created,
	}))(t)
}

// ---- migrations ----

func testMigrations(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m, ok := s.(Migrator)
	if !ok {
		t.Fatalf("%T does not implement storetest.Migrator", s)
	}
	// Data in every table, including rows that reference the seeded
	// platform team, so the down files must delete dependents first.
	team := newTeam(t, s, "acme")
	u := newUser(t, s, "mig@example.com", true)
	must(s.AddTeamMember(ctx, team.ID, u.ID, store.RoleOwner))(t)
	must(s.AddTeamMember(ctx, store.PlatformTeamID, u.ID, store.RoleAdmin))(t)
	must(s.CreateAPIKey(ctx, store.APIKey{TeamID: store.PlatformTeamID, Name: "k", Prefix: "wrn_ab", Hash: "mig-hash", CreatedBy: u.ID}))(t)
	must(s.CreateTemplate(ctx, store.Template{TeamID: store.PlatformTeamID, Name: "extra", Public: true}))(t)
	must(s.CreateBuild(ctx, store.Build{TeamID: store.PlatformTeamID, TemplateName: "extra"}))(t)
	newCapsule(t, s, store.PlatformTeamID, time.Time{})
	newCapsule(t, s, team.ID, time.Time{})
	noErr(t, s.CreateHostToken(ctx, store.HostToken{TokenHash: "ht", TeamID: store.PlatformTeamID, ExpiresAt: time.Now().Add(time.Hour)}))
	must(s.RegisterHost(ctx, "ht", store.Host{Address: "10.0.0.1:50051", CredentialHash: "hc", VCPUs: 2, MemoryMB: 1024, DiskMB: 10000}))(t)
	must(s.CreateInvite(ctx, store.Invite{TeamID: store.PlatformTeamID, Email: "x@example.com", Role: store.RoleMember, TokenHash: "it", ExpiresAt: time.Now().Add(time.Hour)}))(t)
	must(s.InsertAuditLog(ctx, store.AuditLog{TeamID: store.PlatformTeamID, ActorType: store.ActorUser, ActorID: u.ID, Action: "x", Scope: store.ScopeAdmin}))(t)
	noErr(t, s.UpsertDailyUsage(ctx, []store.DailyUsage{{TeamID: team.ID, Day: time.Now(), CPUMinutes: 1}}))
	noErr(t, s.InsertMetricSnapshots(ctx, []store.MetricSnapshot{{CapsuleID: "cl-x", TeamID: team.ID, TS: time.Now(), IntervalMS: 1000}}))

	noErr(t, m.MigrateDownAll(ctx))
	if _, err := s.GetTeam(ctx, team.ID); err == nil {
		t.Fatal("GetTeam after down-migrations: want an error (no tables), got none")
	}
	noErr(t, m.MigrateDownAll(ctx)) // already at zero: no-op
	noErr(t, m.MigrateUpAll(ctx))

	p := must(s.GetPlatformTeam(ctx))(t)
	eq(t, "platform team id", p.ID, store.PlatformTeamID)
	_, err := s.GetTeam(ctx, team.ID)
	wantErr(t, err, store.ErrNotFound)
	tpl := must(s.GetTemplateByName(ctx, "any-team", "base"))(t)
	eq(t, "base template public", tpl.Public, true)
	// Usable again, and the old unique keys are free.
	newUser(t, s, "mig@example.com", false)
	newTeam(t, s, "acme")
	noErr(t, m.MigrateUpAll(ctx)) // already current: no-op
}

// ---- teams ----

func testTeams(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	noErr(t, s.Ping(ctx))
	p := must(s.GetPlatformTeam(ctx))(t)
	eq(t, "platform", p.IsPlatform, true)
	a := newTeam(t, s, "alpha")
	if a.ID == "" || a.CreatedAt.IsZero() || a.IsBYOC {
		t.Fatalf("created team: %+v", a)
	}
	got := must(s.GetTeam(ctx, a.ID))(t)
	if !reflect.DeepEqual(got, a) {
		t.Fatalf("GetTeam: got %+v, want %+v", got, a)
	}
	_, err := s.CreateTeam(ctx, store.Team{ID: a.ID, Name: "dup"})
	wantErr(t, err, store.ErrAlreadyExists)

	noErr(t, s.RenameTeam(ctx, a.ID, "alpha2"))
	noErr(t, s.SetTeamBYOC(ctx, a.ID, true))
	got = must(s.GetTeam(ctx, a.ID))(t)
	eq(t, "name", got.Name, "alpha2")
	eq(t, "byoc", got.IsBYOC, true)
	wantErr(t, s.RenameTeam(ctx, "team-nope", "x"), store.ErrNotFound)
	wantErr(t, s.SetTeamBYOC(ctx, "team-nope", true), store.ErrNotFound)

	teams := must(s.ListTeams(ctx))(t)
	eq(t, "teams", len(teams), 2)

	u := newUser(t, s, "m@example.com", false)
	must(s.AddTeamMember(ctx, a.ID, u.ID, store.RoleOwner))(t)
	ms := must(s.ListTeamsForUser(ctx, u.ID))(t)
	eq(t, "memberships", len(ms), 1)
	eq(t, "membership team", ms[0].Team.ID, a.ID)
	eq(t, "membership role", ms[0].Role, store.RoleOwner)

	wantErr(t, s.DeleteTeam(ctx, store.PlatformTeamID), store.ErrConflict)
	noErr(t, s.DeleteTeam(ctx, a.ID))
	wantErr(t, s.DeleteTeam(ctx, a.ID), store.ErrNotFound)
	_, err = s.GetTeam(ctx, a.ID)
	wantErr(t, err, store.ErrNotFound)
}

func testMembersInvites(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	owner := newUser(t, s, "owner@example.com", false)
	bob := newUser(t, s, "bob@example.com", false)
	must(s.AddTeamMember(ctx, team.ID, owner.ID, store.RoleOwner))(t)
	_, err := s.AddTeamMember(ctx, team.ID, owner.ID, store.RoleMember)
	wantErr(t, err, store.ErrAlreadyExists)
	_, err = s.AddTeamMember(ctx, team.ID, "usr-missing", store.RoleMember)
	wantErr(t, err, store.ErrConflict)
	_, err = s.AddTeamMember(ctx, team.ID, bob.ID, store.Role("king"))
	wantErr(t, err, store.ErrInvalid)

	inv := must(s.CreateInvite(ctx, store.Invite{
		TeamID: team.ID, Email: " Bob@Example.com ", Role: store.RoleAdmin, TokenHash: "tok1",
		InvitedBy: owner.ID, ExpiresAt: time.Now().Add(time.Hour),
	}))(t)
	eq(t, "invite email normalised", inv.Email, "bob@example.com")
	_, err = s.CreateInvite(ctx, store.Invite{TeamID: team.ID, Email: "bob@example.com", Role: store.RoleMember, TokenHash: "tok2", ExpiresAt: time.Now().Add(time.Hour)})
	wantErr(t, err, store.ErrAlreadyExists) // one open invite per email and team
	expired := must(s.CreateInvite(ctx, store.Invite{TeamID: team.ID, Email: "late@example.com", Role: store.RoleMember, TokenHash: "tok3", ExpiresAt: time.Now().Add(-time.Minute)}))(t)

	eq(t, "open invites", len(must(s.ListInvites(ctx, team.ID))(t)), 2)
	forBob := must(s.ListInvitesForEmail(ctx, "BOB@example.com"))(t)
	eq(t, "invites for bob", len(forBob), 1)
	eq(t, "invite by hash", must(s.GetInviteByTokenHash(ctx, "tok1"))(t).ID, inv.ID)
	eq(t, "invites for expired", len(must(s.ListInvitesForEmail(ctx, "late@example.com"))(t)), 0)

	m := must(s.AcceptInvite(ctx, inv.ID, bob.ID))(t)
	eq(t, "accepted role", m.Role, store.RoleAdmin)
	_, err = s.AcceptInvite(ctx, inv.ID, bob.ID)
	wantErr(t, err, store.ErrConflict)
	_, err = s.AcceptInvite(ctx, expired.ID, bob.ID)
	wantErr(t, err, store.ErrConflict)
	_, err = s.AcceptInvite(ctx, "inv-missing", bob.ID)
	wantErr(t, err, store.ErrNotFound)

	members := must(s.ListTeamMembers(ctx, team.ID))(t)
	eq(t, "members", len(members), 2)
	eq(t, "member email", members[1].Email, "bob@example.com")
	noErr(t, s.UpdateTeamMemberRole(ctx, team.ID, bob.ID, store.RoleMember))
	eq(t, "new role", must(s.GetTeamMember(ctx, team.ID, bob.ID))(t).Role, store.RoleMember)
	noErr(t, s.RemoveTeamMember(ctx, team.ID, bob.ID))
	_, err = s.GetTeamMember(ctx, team.ID, bob.ID)
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.RemoveTeamMember(ctx, team.ID, bob.ID), store.ErrNotFound)
	wantErr(t, s.UpdateTeamMemberRole(ctx, team.ID, bob.ID, store.RoleAdmin), store.ErrNotFound)

	noErr(t, s.DeleteInvite(ctx, team.ID, expired.ID))
	wantErr(t, s.DeleteInvite(ctx, team.ID, expired.ID), store.ErrNotFound)
	eq(t, "open invites after", len(must(s.ListInvites(ctx, team.ID))(t)), 0)
}

// ---- users ----

func testUsers(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	u := must(s.CreateUser(ctx, store.User{Email: "Alice@Example.COM", Name: "Alice", PasswordHash: "ph"}))(t)
	eq(t, "email", u.Email, "alice@example.com")
	eq(t, "status", u.Status, store.UserActive)
	_, err := s.CreateUser(ctx, store.User{Email: "alice@example.com", Name: "dup"})
	wantErr(t, err, store.ErrAlreadyExists)

	got := must(s.GetUserByEmail(ctx, "ALICE@example.com"))(t)
	eq(t, "by email", got.ID, u.ID)
	got = must(s.GetUser(ctx, u.ID))(t)
	if got.Email != u.Email || got.PasswordHash != "ph" || !got.CreatedAt.Equal(u.CreatedAt) || got.DeletedAt != nil {
		t.Fatalf("GetUser: got %+v, want %+v", got, u)
	}
	_, err = s.GetUser(ctx, "usr-missing")
	wantErr(t, err, store.ErrNotFound)

	noErr(t, s.SetUserName(ctx, u.ID, "Alice B"))
	noErr(t, s.SetUserPassword(ctx, u.ID, "ph2"))
	noErr(t, s.SetUserEmailVerified(ctx, u.ID, true))
	got = must(s.GetUser(ctx, u.ID))(t)
	if got.Name != "Alice B" || got.PasswordHash != "ph2" || !got.EmailVerified {
		t.Fatalf("after updates: %+v", got)
	}
	wantErr(t, s.SetUserName(ctx, "usr-missing", "x"), store.ErrNotFound)

	noErr(t, s.SetUserActive(ctx, u.ID, false))
	eq(t, "status", must(s.GetUser(ctx, u.ID))(t).Status, store.UserInactive)
	noErr(t, s.SetUserActive(ctx, u.ID, true))
	eq(t, "status", must(s.GetUser(ctx, u.ID))(t).Status, store.UserActive)
	wantErr(t, s.SetUserActive(ctx, "usr-missing", false), store.ErrNotFound)

	for i := range 5 {
		newUser(t, s, fmt.Sprintf("user%d@corp.example", i), false)
	}
	tests := []struct {
		name string
		f    store.UserFilter
		want int
	}{
		{"all", store.UserFilter{}, 6},
		{"search email", store.UserFilter{Search: "CORP"}, 5},
		{"search name", store.UserFilter{Search: "alice b"}, 1},
		{"limit", store.UserFilter{Limit: 2}, 2},
		{"offset", store.UserFilter{Offset: 4}, 2},
		{"wildcards are literal", store.UserFilter{Search: "%"}, 6},
		{"no match", store.UserFilter{Search: "zzz"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eq(t, "users", len(must(s.ListUsers(ctx, tc.f))(t)), tc.want)
		})
	}
}

func testSoftDeleteUser(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	u := newUser(t, s, "gone@example.com", false)
	other := newUser(t, s, "stays@example.com", false)
	must(s.AddTeamMember(ctx, team.ID, u.ID, store.RoleMember))(t)
	must(s.LinkOAuth(ctx, store.OAuthLink{Provider: "github", ProviderUserID: "42", UserID: u.ID, Email: "gone@example.com"}))(t)
	noErr(t, s.CreateUserToken(ctx, store.UserToken{TokenHash: "rt", UserID: u.ID, Kind: store.TokenRefresh, ExpiresAt: time.Now().Add(time.Hour)}))
	for _, actor := range []string{u.ID, u.ID, other.ID} {
		must(s.InsertAuditLog(ctx, store.AuditLog{TeamID: team.ID, ActorType: store.ActorUser, ActorID: actor, ActorName: actor + "-name", ResourceType: "capsule", Action: "create"}))(t)
	}

	noErr(t, s.SoftDeleteUser(ctx, u.ID))
	_, err := s.GetUser(ctx, u.ID)
	wantErr(t, err, store.ErrNotFound)
	_, err = s.GetUserByEmail(ctx, "gone@example.com")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.SoftDeleteUser(ctx, u.ID), store.ErrNotFound)
	_, err = s.GetTeamMember(ctx, team.ID, u.ID)
	wantErr(t, err, store.ErrNotFound)
	_, err = s.GetOAuthLink(ctx, "github", "42")
	wantErr(t, err, store.ErrNotFound)
	_, err = s.ConsumeUserToken(ctx, "rt", store.TokenRefresh)
	wantErr(t, err, store.ErrNotFound)

	// Audit entries stay but no longer name the user.
	logs, _ := must2(t)(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: team.ID}))
	eq(t, "audit entries kept", len(logs), 3)
	for _, l := range logs {
		if l.ActorID == u.ID || l.ActorName == u.ID+"-name" {
			t.Fatalf("audit entry still names the deleted user: %+v", l)
		}
	}
	byOther, _ := must2(t)(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: team.ID, ActorID: other.ID}))
	eq(t, "other user's entries untouched", len(byOther), 1)
	eq(t, "other actor name", byOther[0].ActorName, other.ID+"-name")

	// The email is free again.
	newUser(t, s, "gone@example.com", false)
}

func must2(t *testing.T) func([]store.AuditLog, string, error) ([]store.AuditLog, string) {
	return func(l []store.AuditLog, next string, err error) ([]store.AuditLog, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return l, next
	}
}

func testAdminGrantRevoke(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newUser(t, s, "a@example.com", true)
	b := newUser(t, s, "b@example.com", false)
	eq(t, "admins", must(s.CountActiveAdmins(ctx))(t), int64(1))

	eq(t, "grant", must(s.GrantUserAdmin(ctx, b.ID))(t), true)
	eq(t, "grant again is a no-op", must(s.GrantUserAdmin(ctx, b.ID))(t), false)
	_, err := s.GrantUserAdmin(ctx, "usr-missing")
	wantErr(t, err, store.ErrNotFound)
	eq(t, "admins", must(s.CountActiveAdmins(ctx))(t), int64(2))

	eq(t, "revoke", must(s.RevokeUserAdmin(ctx, b.ID))(t), true)
	eq(t, "revoke again is a no-op", must(s.RevokeUserAdmin(ctx, b.ID))(t), false)
	_, err = s.RevokeUserAdmin(ctx, a.ID)
	wantErr(t, err, store.ErrLastAdmin)
	_, err = s.RevokeUserAdmin(ctx, "usr-missing")
	wantErr(t, err, store.ErrNotFound)

	// Deactivating or deleting the last active admin is refused too.
	wantErr(t, s.SetUserActive(ctx, a.ID, false), store.ErrLastAdmin)
	wantErr(t, s.SoftDeleteUser(ctx, a.ID), store.ErrLastAdmin)
	eq(t, "a still admin", must(s.GetUser(ctx, a.ID))(t).IsAdmin, true)

	// An inactive admin does not count: with b active admin, a may go.
	must(s.GrantUserAdmin(ctx, b.ID))(t)
	noErr(t, s.SetUserActive(ctx, a.ID, false))
	wantErr(t, s.SetUserActive(ctx, b.ID, false), store.ErrLastAdmin)
	_, err = s.RevokeUserAdmin(ctx, b.ID)
	wantErr(t, err, store.ErrLastAdmin)
	// Revoking the inactive admin a is allowed (b remains).
	eq(t, "revoke inactive", must(s.RevokeUserAdmin(ctx, a.ID))(t), true)
	noErr(t, s.SetUserActive(ctx, a.ID, true))
	must(s.GrantUserAdmin(ctx, a.ID))(t)
	noErr(t, s.SoftDeleteUser(ctx, b.ID))
	eq(t, "admins", must(s.CountActiveAdmins(ctx))(t), int64(1))
}

// testLastAdminConcurrent fires many concurrent revokes (and deactivations)
// at the last admins, round after round, and checks one always remains.
func testLastAdminConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	rounds, workers := 20, 16
	if testing.Short() {
		rounds = 5
	}
	a := newUser(t, s, "a@example.com", true)
	b := newUser(t, s, "b@example.com", true)
	c := newUser(t, s, "c@example.com", false)
	ids := []string{a.ID, b.ID, c.ID}
	for r := range rounds {
		// Round r: two or three admins, revoked concurrently from all sides.
		for _, id := range ids[:2+r%2] {
			must(s.GrantUserAdmin(ctx, id))(t)
			noErr(t, s.SetUserActive(ctx, id, true))
		}
		var revoked, refused atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				id := ids[w%len(ids)]
				var err error
				var changed bool
				if w%5 == 4 {
					err = s.SetUserActive(ctx, id, false)
					changed = err == nil
				} else {
					changed, err = s.RevokeUserAdmin(ctx, id)
				}
				switch {
				case errors.Is(err, store.ErrLastAdmin):
					refused.Add(1)
				case err != nil:
					errs <- err
				case changed:
					revoked.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: unexpected error: %v", r, err)
		}
		n := must(s.CountActiveAdmins(ctx))(t)
		if n != 1 {
			t.Fatalf("round %d: %d active admins after concurrent revokes (revoked %d, refused %d), want exactly 1",
				r, n, revoked.Load(), refused.Load())
		}
		if refused.Load() == 0 {
			t.Fatalf("round %d: no revoke was refused", r)
		}
	}
}

func testUserTokens(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	u := newUser(t, s, "t@example.com", false)
	noErr(t, s.CreateUserToken(ctx, store.UserToken{TokenHash: "v1", UserID: u.ID, Kind: store.TokenEmailVerify, ExpiresAt: time.Now().Add(time.Hour)}))
	noErr(t, s.CreateUserToken(ctx, store.UserToken{TokenHash: "old", UserID: u.ID, Kind: store.TokenPasswordReset, ExpiresAt: time.Now().Add(-time.Second)}))
	noErr(t, s.CreateUserToken(ctx, store.UserToken{TokenHash: "r1", UserID: u.ID, Kind: store.TokenRefresh, ExpiresAt: time.Now().Add(time.Hour)}))
	wantErr(t, s.CreateUserToken(ctx, store.UserToken{TokenHash: "r1", UserID: u.ID, Kind: store.TokenRefresh, ExpiresAt: time.Now().Add(time.Hour)}), store.ErrAlreadyExists)

	_, err := s.ConsumeUserToken(ctx, "v1", store.TokenPasswordReset)
	wantErr(t, err, store.ErrNotFound) // wrong kind
	tok := must(s.ConsumeUserToken(ctx, "v1", store.TokenEmailVerify))(t)
	eq(t, "token user", tok.UserID, u.ID)
	_, err = s.ConsumeUserToken(ctx, "v1", store.TokenEmailVerify)
	wantErr(t, err, store.ErrNotFound) // once
	_, err = s.ConsumeUserToken(ctx, "old", store.TokenPasswordReset)
	wantErr(t, err, store.ErrNotFound) // expired

	noErr(t, s.DeleteUserTokens(ctx, u.ID, store.TokenRefresh))
	_, err = s.ConsumeUserToken(ctx, "r1", store.TokenRefresh)
	wantErr(t, err, store.ErrNotFound)
}

func testAPIKeys(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	u := newUser(t, s, "k@example.com", false)
	k := must(s.CreateAPIKey(ctx, store.APIKey{TeamID: team.ID, Name: "ci", Prefix: "wrn_abcd", Hash: "h1", CreatedBy: u.ID}))(t)
	if k.LastUsedAt != nil || k.CreatedBy != u.ID {
		t.Fatalf("created key: %+v", k)
	}
	_, err := s.CreateAPIKey(ctx, store.APIKey{TeamID: team.ID, Name: "dup", Prefix: "wrn_x", Hash: "h1"})
	wantErr(t, err, store.ErrAlreadyExists)
	_, err = s.CreateAPIKey(ctx, store.APIKey{TeamID: "team-missing", Name: "x", Prefix: "wrn_x", Hash: "h2"})
	wantErr(t, err, store.ErrConflict)

	got := must(s.LookupAPIKey(ctx, "h1"))(t)
	eq(t, "lookup id", got.ID, k.ID)
	if got.LastUsedAt == nil {
		t.Fatal("LookupAPIKey did not record last use")
	}
	listed := must(s.ListAPIKeys(ctx, team.ID))(t)
	eq(t, "keys", len(listed), 1)
	if listed[0].LastUsedAt == nil {
		t.Fatal("last use not persisted")
	}
	_, err = s.LookupAPIKey(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	noErr(t, s.DeleteAPIKey(ctx, team.ID, k.ID))
	wantErr(t, s.DeleteAPIKey(ctx, team.ID, k.ID), store.ErrNotFound)
	_, err = s.LookupAPIKey(ctx, "h1")
	wantErr(t, err, store.ErrNotFound)
}

func testOAuth(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	u := newUser(t, s, "o@example.com", false)
	l := must(s.LinkOAuth(ctx, store.OAuthLink{Provider: "github", ProviderUserID: "7", UserID: u.ID, Email: "O@example.com"}))(t)
	eq(t, "email", l.Email, "o@example.com")
	_, err := s.LinkOAuth(ctx, store.OAuthLink{Provider: "github", ProviderUserID: "7", UserID: u.ID, Email: "o@example.com"})
	wantErr(t, err, store.ErrAlreadyExists)
	_, err = s.LinkOAuth(ctx, store.OAuthLink{Provider: "github", ProviderUserID: "8", UserID: u.ID, Email: "o@example.com"})
	wantErr(t, err, store.ErrAlreadyExists) // one link per provider and user
	eq(t, "lookup", must(s.GetOAuthLink(ctx, "github", "7"))(t).UserID, u.ID)
	eq(t, "links", len(must(s.ListOAuthLinks(ctx, u.ID))(t)), 1)
	noErr(t, s.UnlinkOAuth(ctx, u.ID, "github"))
	wantErr(t, s.UnlinkOAuth(ctx, u.ID, "github"), store.ErrNotFound)
	_, err = s.GetOAuthLink(ctx, "github", "7")
	wantErr(t, err, store.ErrNotFound)
}

// ---- hosts ----

func testHosts(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	byoc := newTeam(t, s, "byoc")
	noErr(t, s.CreateHostToken(ctx, store.HostToken{TokenHash: "shared", ExpiresAt: time.Now().Add(time.Hour)}))
	noErr(t, s.CreateHostToken(ctx, store.HostToken{TokenHash: "own", TeamID: byoc.ID, ExpiresAt: time.Now().Add(time.Hour)}))
	noErr(t, s.CreateHostToken(ctx, store.HostToken{TokenHash: "stale", ExpiresAt: time.Now().Add(-time.Second)}))

	h1 := must(s.RegisterHost(ctx, "shared", store.Host{Address: "10.0.0.1:50051", CredentialHash: "c1", VCPUs: 8, MemoryMB: 16384, DiskMB: 100000}))(t)
	if h1.Status != store.HostOnline || h1.TeamID != "" || h1.LastHeartbeatAt == nil {
		t.Fatalf("registered host: %+v", h1)
	}
	_, err := s.RegisterHost(ctx, "shared", store.Host{Address: "x", CredentialHash: "c9"})
	wantErr(t, err, store.ErrNotFound) // token used
	_, err = s.RegisterHost(ctx, "stale", store.Host{Address: "x", CredentialHash: "c8"})
	wantErr(t, err, store.ErrNotFound) // token expired
	h2 := must(s.RegisterHost(ctx, "own", store.Host{Address: "10.0.0.2:50051", CredentialHash: "c2", VCPUs: 2, MemoryMB: 2048, DiskMB: 1000}))(t)
	eq(t, "byoc host team", h2.TeamID, byoc.ID)

	eq(t, "by credential", must(s.GetHostByCredentialHash(ctx, "c2"))(t).ID, h2.ID)
	eq(t, "hosts", len(must(s.ListHosts(ctx))(t)), 2)
	shared := must(s.ListSchedulableHosts(ctx, "any", false))(t)
	eq(t, "shared hosts", len(shared), 1)
	eq(t, "shared host", shared[0].ID, h1.ID)
	own := must(s.ListSchedulableHosts(ctx, byoc.ID, true))(t)
	eq(t, "own hosts", len(own), 1)
	eq(t, "own host", own[0].ID, h2.ID)
	eq(t, "other team's byoc hosts", len(must(s.ListSchedulableHosts(ctx, "team-other", true))(t)), 0)

	// A template built on a host remembers it; deleting the host clears it.
	built := must(s.CreateTemplate(ctx, store.Template{TeamID: byoc.ID, Name: "built-here", HostID: h2.ID}))(t)
	eq(t, "built template host", built.HostID, h2.ID)
	eq(t, "built template host (get)", must(s.GetTemplate(ctx, byoc.ID, built.ID))(t).HostID, h2.ID)
	eq(t, "template without a host", must(s.CreateTemplate(ctx, store.Template{TeamID: byoc.ID, Name: "everywhere"}))(t).HostID, "")
	// A template in the shared template store keeps its checksum, memory
	// flag and tagged name.
	sh := must(s.CreateTemplate(ctx, store.Template{TeamID: byoc.ID, Name: "snap:v2", HostID: h2.ID, Checksum: "abc+def", Memory: true, SourceCapsuleID: "cl-src"}))(t)
	gotT := must(s.GetTemplateByName(ctx, byoc.ID, "snap:v2"))(t)
	eq(t, "shared template checksum", gotT.Checksum, "abc+def")
	eq(t, "shared template memory", gotT.Memory, true)
	eq(t, "shared template id", gotT.ID, sh.ID)
	eq(t, "snapshot source", gotT.SourceCapsuleID, "cl-src")
	eq(t, "plain template checksum", built.Checksum, "")
	eq(t, "plain template memory", built.Memory, false)

	hb := must(s.HostHeartbeat(ctx, h1.ID, store.HostUsage{Address: "10.0.0.1:50052", VCPUs: 8, MemoryMB: 16384, DiskMB: 100000, UsedVCPUs: 3, UsedMemoryMB: 2048, UsedDiskMB: 500}))(t)
	if hb.UsedVCPUs != 3 || hb.UsedMemoryMB != 2048 || hb.Address != "10.0.0.1:50052" {
		t.Fatalf("after heartbeat: %+v", hb)
	}
	eq(t, "capabilities before any report", hb.Capabilities, "{}")
	// Overcommit ratios and capabilities are stored as reported.
	hb = must(s.HostHeartbeat(ctx, h1.ID, store.HostUsage{
		Address: "10.0.0.1:50052", VCPUs: 8, MemoryMB: 16384, DiskMB: 100000, UsedVCPUs: 3,
		CPUOvercommit: 32, MemoryOvercommit: 4, DiskOvercommit: 2.5, Capabilities: `{"runtimes":["container"]}`,
	}))(t)
	got := must(s.GetHost(ctx, h1.ID))(t)
	if got.CPUOvercommit != 32 || got.MemoryOvercommit != 4 || got.DiskOvercommit != 2.5 || got.Capabilities != `{"runtimes":["container"]}` || hb.CPUOvercommit != 32 {
		t.Fatalf("overcommit/capabilities after heartbeat: %+v", got)
	}
	// Capabilities alone (from the agent's GetHostInfo): no heartbeat.
	noErr(t, s.SetHostCapabilities(ctx, h1.ID, store.HostUsage{CPUOvercommit: 64, MemoryOvercommit: 2, DiskOvercommit: 3, Capabilities: `{"runtimes":["x"]}`}))
	got2 := must(s.GetHost(ctx, h1.ID))(t)
	if got2.CPUOvercommit != 64 || got2.MemoryOvercommit != 2 || got2.DiskOvercommit != 3 || got2.Capabilities != `{"runtimes":["x"]}` ||
		!got2.LastHeartbeatAt.Equal(*got.LastHeartbeatAt) || got2.VCPUs != got.VCPUs {
		t.Fatalf("after SetHostCapabilities: %+v (before %+v)", got2, got)
	}
	wantErr(t, s.SetHostCapabilities(ctx, "host-missing", store.HostUsage{}), store.ErrNotFound)
	_, err = s.HostHeartbeat(ctx, "host-missing", store.HostUsage{})
	wantErr(t, err, store.ErrNotFound)

	// Both hosts' heartbeats are older than a cutoff in the future.
	stale := must(s.MarkStaleHostsUnavailable(ctx, time.Now().Add(time.Minute)))(t)
	slices.Sort(stale)
	want := []string{h1.ID, h2.ID}
	slices.Sort(want)
	if !slices.Equal(stale, want) {
		t.Fatalf("stale hosts: got %v, want %v", stale, want)
	}
	eq(t, "status", must(s.GetHost(ctx, h1.ID))(t).Status, store.HostUnavailable)
	eq(t, "marked again", len(must(s.MarkStaleHostsUnavailable(ctx, time.Now().Add(time.Minute)))(t)), 0)
	eq(t, "no schedulable", len(must(s.ListSchedulableHosts(ctx, "any", false))(t)), 0)
	// A heartbeat brings it back.
	eq(t, "status", must(s.HostHeartbeat(ctx, h1.ID, store.HostUsage{Address: "a", VCPUs: 8, MemoryMB: 1, DiskMB: 1}))(t).Status, store.HostOnline)
	eq(t, "fresh host not stale", len(must(s.MarkStaleHostsUnavailable(ctx, time.Now().Add(-time.Minute)))(t)), 0)

	// A draining (or drained) host takes no new placements, whatever its
	// heartbeats say; undrained, it is schedulable again.
	schedulable := func() bool {
		return slices.ContainsFunc(must(s.ListSchedulableHosts(ctx, "any", false))(t), func(h store.Host) bool { return h.ID == h1.ID })
	}
	eq(t, "schedulable before a drain", schedulable(), true)
	noErr(t, s.SetHostDrain(ctx, h1.ID, store.HostDrainDraining, `{"left":1}`))
	must(s.HostHeartbeat(ctx, h1.ID, store.HostUsage{Address: "a", VCPUs: 8, MemoryMB: 1, DiskMB: 1}))(t)
	dh := must(s.GetHost(ctx, h1.ID))(t)
	if dh.Drain != store.HostDrainDraining || dh.DrainReport != `{"left":1}` || dh.Status != store.HostOnline {
		t.Fatalf("draining host: drain %q report %q status %q", dh.Drain, dh.DrainReport, dh.Status)
	}
	eq(t, "schedulable while draining", schedulable(), false)
	noErr(t, s.SetHostDrain(ctx, h1.ID, store.HostDrainNone, ""))
	eq(t, "schedulable after undrain", schedulable(), true)
	wantErr(t, s.SetHostDrain(ctx, "host-missing", store.HostDrainDraining, ""), store.ErrNotFound)

	noErr(t, s.SetHostStatus(ctx, h1.ID, store.HostDraining))
	eq(t, "draining", must(s.GetHost(ctx, h1.ID))(t).Status, store.HostDraining)
	wantErr(t, s.SetHostStatus(ctx, h1.ID, "bogus"), store.ErrInvalid)

	// Deleting a host detaches its capsules.
	c := newCapsule(t, s, byoc.ID, time.Time{})
	noErr(t, s.SetCapsuleHost(ctx, byoc.ID, c.ID, h2.ID))
	eq(t, "capsules on host", len(must(s.ListCapsulesByHost(ctx, h2.ID))(t)), 1)
	// A move re-homes a capsule only from the host and status it was read
	// in (two racing moves: one wins).
	noErr(t, s.SetCapsuleMoveRecord(ctx, byoc.ID, c.ID, `{"version":1}`))
	eq(t, "move record", must(s.GetCapsule(ctx, byoc.ID, c.ID))(t).MoveRecord, `{"version":1}`)
	eq(t, "move from another status", must(s.MoveCapsuleHost(ctx, byoc.ID, c.ID, h2.ID, h1.ID, store.CapsuleError))(t), false)
	eq(t, "move", must(s.MoveCapsuleHost(ctx, byoc.ID, c.ID, h2.ID, h1.ID, c.Status))(t), true)
	eq(t, "moved", must(s.GetCapsule(ctx, byoc.ID, c.ID))(t).HostID, h1.ID)
	eq(t, "second move from the old host", must(s.MoveCapsuleHost(ctx, byoc.ID, c.ID, h2.ID, h1.ID, c.Status))(t), false)
	eq(t, "move back", must(s.MoveCapsuleHost(ctx, byoc.ID, c.ID, h1.ID, h2.ID, c.Status))(t), true)
	wantErr(t, s.SetCapsuleMoveRecord(ctx, byoc.ID, "cl-missing", ""), store.ErrNotFound)
	noErr(t, s.DeleteHost(ctx, h2.ID))
	wantErr(t, s.DeleteHost(ctx, h2.ID), store.ErrNotFound)
	eq(t, "capsule host cleared", must(s.GetCapsule(ctx, byoc.ID, c.ID))(t).HostID, "")
	eq(t, "built template host cleared", must(s.GetTemplate(ctx, byoc.ID, built.ID))(t).HostID, "")
}

// ---- templates and builds ----

func testTemplates(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	b := newTeam(t, s, "b")
	own := must(s.CreateTemplate(ctx, store.Template{TeamID: a.ID, Name: "base", SizeBytes: 10}))(t)
	_, err := s.CreateTemplate(ctx, store.Template{TeamID: a.ID, Name: "base"})
	wantErr(t, err, store.ErrAlreadyExists)

	// Team a's "base" shadows the public one; team b sees the public one.
	eq(t, "a's base", must(s.GetTemplateByName(ctx, a.ID, "base"))(t).ID, own.ID)
	eq(t, "b's base", must(s.GetTemplateByName(ctx, b.ID, "base"))(t).ID, "tpl-base")
	eq(t, "public by id", must(s.GetTemplate(ctx, b.ID, "tpl-minimal"))(t).Name, "minimal")
	_, err = s.GetTemplate(ctx, b.ID, own.ID)
	wantErr(t, err, store.ErrNotFound)
	_, err = s.GetTemplateByName(ctx, b.ID, "nope")
	wantErr(t, err, store.ErrNotFound)

	eq(t, "a's templates", len(must(s.ListTemplates(ctx, a.ID))(t)), 3) // own + 2 public
	eq(t, "b's templates", len(must(s.ListTemplates(ctx, b.ID))(t)), 2)
	eq(t, "all templates", len(must(s.AdminListTemplates(ctx))(t)), 3)

	noErr(t, s.SetTemplateSize(ctx, a.ID, own.ID, 4096))
	eq(t, "size", must(s.GetTemplate(ctx, a.ID, own.ID))(t).SizeBytes, int64(4096))
	wantErr(t, s.SetTemplateSize(ctx, b.ID, own.ID, 1), store.ErrNotFound)
	// Public templates cannot be deleted by a team that does not own them.
	wantErr(t, s.DeleteTemplate(ctx, b.ID, "tpl-base"), store.ErrNotFound)
	noErr(t, s.DeleteTemplate(ctx, a.ID, own.ID))
	noErr(t, s.DeleteTemplate(ctx, store.PlatformTeamID, "tpl-minimal"))
	eq(t, "all templates after", len(must(s.AdminListTemplates(ctx))(t)), 1)
}

func testBuilds(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	b1 := must(s.CreateBuild(ctx, store.Build{TeamID: a.ID, TemplateName: "py", Spec: []byte(`{"from":"base"}`)}))(t)
	eq(t, "status", b1.Status, store.BuildPending)
	eq(t, "spec", string(must(s.GetBuild(ctx, a.ID, b1.ID))(t).Spec) != "", true)
	b2 := must(s.CreateBuild(ctx, store.Build{TeamID: a.ID, TemplateName: "node"}))(t)

	eq(t, "start", must(s.UpdateBuildStatus(ctx, a.ID, b1.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "", ""))(t), true)
	eq(t, "start twice", must(s.UpdateBuildStatus(ctx, a.ID, b1.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "", ""))(t), false)
	before := must(s.GetBuild(ctx, a.ID, b1.ID))(t)
	time.Sleep(5 * time.Millisecond)
	eq(t, "touch running", must(s.TouchBuild(ctx, a.ID, b1.ID))(t), true)
	touched := must(s.GetBuild(ctx, a.ID, b1.ID))(t)
	if !touched.UpdatedAt.After(before.UpdatedAt) || touched.Error != before.Error || touched.Status != store.BuildRunning {
		t.Fatalf("touch: before %+v, after %+v", before, touched)
	}
	eq(t, "touch pending", must(s.TouchBuild(ctx, a.ID, b2.ID))(t), false)
	eq(t, "touch other team's", must(s.TouchBuild(ctx, "team-nope", b1.ID))(t), false)
	ok := must(s.UpdateBuildStatus(ctx, a.ID, b1.ID, []store.BuildStatus{store.BuildRunning}, store.BuildSucceeded, "", "tpl-py"))(t)
	eq(t, "succeed", ok, true)
	got := must(s.GetBuild(ctx, a.ID, b1.ID))(t)
	if got.Status != store.BuildSucceeded || got.TemplateID != "tpl-py" || got.FinishedAt == nil {
		t.Fatalf("finished build: %+v", got)
	}
	cancel := []store.BuildStatus{store.BuildPending, store.BuildRunning}
	eq(t, "cancel finished", must(s.UpdateBuildStatus(ctx, a.ID, b1.ID, cancel, store.BuildCancelled, "", ""))(t), false)
	eq(t, "cancel pending", must(s.UpdateBuildStatus(ctx, a.ID, b2.ID, cancel, store.BuildCancelled, "cancelled by admin", ""))(t), true)
	eq(t, "error text", must(s.GetBuild(ctx, a.ID, b2.ID))(t).Error, "cancelled by admin")

	eq(t, "builds", len(must(s.ListBuilds(ctx, a.ID))(t)), 2)
	eq(t, "all builds", len(must(s.AdminListBuilds(ctx))(t)), 2)
}

// testBuildLogs: records come back in order after a seq, bounded by the
// limit; trimming drops the oldest; they go with their build's team.
func testBuildLogs(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "logs")
	b := must(s.CreateBuild(ctx, store.Build{TeamID: a.ID, TemplateName: "py"}))(t)
	now := store.Now()
	var recs []store.BuildLog
	for i := 1; i <= 5; i++ {
		recs = append(recs, store.BuildLog{Seq: int64(i), Time: now, Step: i / 2, Stream: "stdout", Data: []byte{byte('a' + i), 0, 0xff}})
	}
	if err := s.AppendBuildLogs(ctx, b.ID, recs[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendBuildLogs(ctx, b.ID, recs[2:]); err != nil {
		t.Fatal(err)
	}
	got := must(s.ListBuildLogs(ctx, b.ID, 1, 3))(t)
	eq(t, "page", len(got), 3)
	eq(t, "first seq", got[0].Seq, int64(2))
	eq(t, "data", string(got[0].Data), string(recs[1].Data))
	eq(t, "step", got[2].Step, 2)
	eq(t, "time", got[0].Time.Equal(now), true)
	if err := s.TrimBuildLogs(ctx, b.ID, 4); err != nil {
		t.Fatal(err)
	}
	got = must(s.ListBuildLogs(ctx, b.ID, 0, 100))(t)
	eq(t, "after trim", len(got), 2)
	eq(t, "oldest kept", got[0].Seq, int64(4))
	if err := s.AppendBuildLogs(ctx, b.ID, recs[4:]); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("duplicate seq: %v, want ErrAlreadyExists", err)
	}
	if err := s.DeleteTeam(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	eq(t, "gone with the team", len(must(s.ListBuildLogs(ctx, b.ID, 0, 100))(t)), 0)
}

// ---- capsules ----

// testCapsuleErrorReason: allow_internet is stored; FailCapsule records a
// reason that any later status change clears.
func testCapsuleErrorReason(t *testing.T, s store.Store, teamID string) {
	ctx := ctxT(t)
	c := must(s.CreateCapsule(ctx, store.Capsule{TeamID: teamID, TemplateID: "tpl-base", AllowInternet: true, Status: store.CapsuleStarting}))(t)
	eq(t, "allow_internet", must(s.GetCapsule(ctx, teamID, c.ID))(t).AllowInternet, true)
	eq(t, "fail from wrong state", must(s.FailCapsule(ctx, teamID, c.ID, store.CapsuleRunning, "x"))(t), false)
	eq(t, "fail", must(s.FailCapsule(ctx, teamID, c.ID, store.CapsuleStarting, "agent said no"))(t), true)
	got := must(s.GetCapsule(ctx, teamID, c.ID))(t)
	eq(t, "status", got.Status, store.CapsuleError)
	eq(t, "reason", got.ErrorReason, "agent said no")
	eq(t, "leave error", must(s.UpdateCapsuleStatus(ctx, teamID, c.ID, store.CapsuleError, store.CapsuleRunning))(t), true)
	eq(t, "reason cleared", must(s.GetCapsule(ctx, teamID, c.ID))(t).ErrorReason, "")
	noErr(t, s.DeleteCapsule(ctx, teamID, c.ID))
}

// testIsolationChoice (migration 13): a capsule's isolation is stored at
// create ("container" when none is given); a team's default isolation and
// a template's are unset, set and cleared, each scoped to its team.
func testIsolationChoice(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "iso")
	other := newTeam(t, s, "iso-other")
	eq(t, "team default unset", team.DefaultIsolation, "")
	noErr(t, s.SetTeamDefaultIsolation(ctx, team.ID, "gvisor"))
	eq(t, "team default set", must(s.GetTeam(ctx, team.ID))(t).DefaultIsolation, "gvisor")
	eq(t, "other team untouched", must(s.GetTeam(ctx, other.ID))(t).DefaultIsolation, "")
	u := newUser(t, s, "iso@example.com", false)
	must(s.AddTeamMember(ctx, team.ID, u.ID, store.RoleOwner))(t)
	ms := must(s.ListTeamsForUser(ctx, u.ID))(t)
	if len(ms) != 1 || ms[0].Team.DefaultIsolation != "gvisor" {
		t.Fatalf("team list: default isolation not gvisor: %+v", ms)
	}
	noErr(t, s.SetTeamDefaultIsolation(ctx, team.ID, ""))
	eq(t, "team default cleared", must(s.GetTeam(ctx, team.ID))(t).DefaultIsolation, "")
	wantErr(t, s.SetTeamDefaultIsolation(ctx, "team-nope", "gvisor"), store.ErrNotFound)

	tpl := must(s.CreateTemplate(ctx, store.Template{TeamID: team.ID, Name: "iso-tpl"}))(t)
	eq(t, "template default unset", tpl.Isolation, "")
	noErr(t, s.SetTemplateIsolation(ctx, team.ID, tpl.ID, "microvm"))
	eq(t, "template default set", must(s.GetTemplate(ctx, team.ID, tpl.ID))(t).Isolation, "microvm")
	eq(t, "template by name", must(s.GetTemplateByName(ctx, team.ID, "iso-tpl"))(t).Isolation, "microvm")
	wantErr(t, s.SetTemplateIsolation(ctx, other.ID, tpl.ID, ""), store.ErrNotFound)
	noErr(t, s.SetTemplateIsolation(ctx, team.ID, tpl.ID, ""))
	eq(t, "template default cleared", must(s.GetTemplate(ctx, team.ID, tpl.ID))(t).Isolation, "")

	plain := must(s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: tpl.ID}))(t)
	eq(t, "capsule isolation defaulted", plain.Isolation, store.DefaultIsolation)
	gv := must(s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: tpl.ID, Isolation: "gvisor"}))(t)
	eq(t, "capsule isolation at create", gv.Isolation, "gvisor")
	eq(t, "capsule isolation read back", must(s.GetCapsule(ctx, team.ID, gv.ID))(t).Isolation, "gvisor")
}

// testCapsuleNetwork: a capsule's egress policy is stored at create and
// replaced (or cleared) with SetCapsuleNetwork, scoped to its team; a
// team's capsule_internet default is unset, set and cleared.
func testCapsuleNetwork(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "net")
	other := newTeam(t, s, "other")
	eq(t, "team default unset", team.CapsuleInternet == nil, true)
	off := false
	noErr(t, s.SetTeamCapsuleInternet(ctx, team.ID, &off))
	got := must(s.GetTeam(ctx, team.ID))(t)
	if got.CapsuleInternet == nil || *got.CapsuleInternet {
		t.Fatalf("capsule_internet = %v, want false", got.CapsuleInternet)
	}
	u := newUser(t, s, "net@example.com", false)
	must(s.AddTeamMember(ctx, team.ID, u.ID, store.RoleOwner))(t)
	ms := must(s.ListTeamsForUser(ctx, u.ID))(t)
	if len(ms) != 1 || ms[0].Team.CapsuleInternet == nil || *ms[0].Team.CapsuleInternet {
		t.Fatalf("team list: capsule_internet not false: %+v", ms)
	}
	noErr(t, s.SetTeamCapsuleInternet(ctx, team.ID, nil))
	eq(t, "team default cleared", must(s.GetTeam(ctx, team.ID))(t).CapsuleInternet == nil, true)
	wantErr(t, s.SetTeamCapsuleInternet(ctx, "team-nope", &off), store.ErrNotFound)

	// Private ranges a platform admin allowed the team (BYOC), set,
	// replaced and cleared.
	eq(t, "no private ranges", len(team.AllowedPrivateRanges), 0)
	noErr(t, s.SetTeamPrivateRanges(ctx, team.ID, []string{"10.111.0.0/16", "fd00:111::/64"}))
	if r := must(s.GetTeam(ctx, team.ID))(t).AllowedPrivateRanges; !reflect.DeepEqual(r, []string{"10.111.0.0/16", "fd00:111::/64"}) {
		t.Fatalf("allowed_private_ranges = %v", r)
	}
	eq(t, "other team untouched", len(must(s.GetTeam(ctx, other.ID))(t).AllowedPrivateRanges), 0)
	noErr(t, s.SetTeamPrivateRanges(ctx, team.ID, nil))
	eq(t, "private ranges cleared", len(must(s.GetTeam(ctx, team.ID))(t).AllowedPrivateRanges), 0)
	wantErr(t, s.SetTeamPrivateRanges(ctx, "team-nope", []string{"10.111.0.0/16"}), store.ErrNotFound)

	// A template's capsule_internet default, scoped to its team.
	tpl := must(s.CreateTemplate(ctx, store.Template{TeamID: team.ID, Name: "net-tpl"}))(t)
	eq(t, "template default unset", tpl.CapsuleInternet == nil, true)
	noErr(t, s.SetTemplateCapsuleInternet(ctx, team.ID, tpl.ID, &off))
	if v := must(s.GetTemplate(ctx, team.ID, tpl.ID))(t).CapsuleInternet; v == nil || *v {
		t.Fatalf("template capsule_internet = %v, want false", v)
	}
	wantErr(t, s.SetTemplateCapsuleInternet(ctx, other.ID, tpl.ID, nil), store.ErrNotFound)
	noErr(t, s.SetTemplateCapsuleInternet(ctx, team.ID, tpl.ID, nil))
	eq(t, "template default cleared", must(s.GetTemplate(ctx, team.ID, tpl.ID))(t).CapsuleInternet == nil, true)

	nw := &store.CapsuleNetwork{AllowOut: []string{"203.0.113.0/24", "*.example.com"}, DenyOut: []string{"0.0.0.0/0"}, EgressMBps: 10, BurstMB: 5}
	c := must(s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: "tpl-base", AllowInternet: true, Network: nw}))(t)
	g := must(s.GetCapsule(ctx, team.ID, c.ID))(t)
	if g.Network == nil || len(g.Network.AllowOut) != 2 || g.Network.AllowOut[1] != "*.example.com" || g.Network.DenyOut[0] != "0.0.0.0/0" || g.Network.EgressMBps != 10 || g.Network.BurstMB != 5 {
		t.Fatalf("network = %+v", g.Network)
	}
	plain := must(s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: "tpl-base", AllowInternet: true}))(t)
	eq(t, "no policy", must(s.GetCapsule(ctx, team.ID, plain.ID))(t).Network == nil, true)
	noErr(t, s.SetCapsuleNetwork(ctx, team.ID, c.ID, true, &store.CapsuleNetwork{DenyOut: []string{"198.51.100.7"}}))
	g = must(s.GetCapsule(ctx, team.ID, c.ID))(t)
	if g.Network == nil || len(g.Network.AllowOut) != 0 || len(g.Network.DenyOut) != 1 || g.Network.EgressMBps != 0 || !g.AllowInternet {
		t.Fatalf("network after set = %+v", g.Network)
	}
	noErr(t, s.SetCapsuleNetwork(ctx, team.ID, c.ID, false, nil))
	g = must(s.GetCapsule(ctx, team.ID, c.ID))(t)
	eq(t, "cleared", g.Network == nil, true)
	eq(t, "internet off", g.AllowInternet, false)
	wantErr(t, s.SetCapsuleNetwork(ctx, other.ID, c.ID, true, nil), store.ErrNotFound)
}

func testCapsules(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	exp := time.Now().Add(5 * time.Minute)
	c := must(s.CreateCapsule(ctx, store.Capsule{
		TeamID: team.ID, TemplateID: "tpl-base", VCPUs: 2, MemoryMB: 1024, DiskSizeMB: 5120, TimeoutSec: 300,
		ExpiresAt: &exp, Env: map[string]string{"FOO": "bar"}, Public: true, AccessTokenHash: "ath", CreatedBy: "usr-1",
	}))(t)
	if len(c.ID) < 4 || c.ID[:3] != "cl-" || c.Status != store.CapsulePending {
		t.Fatalf("created capsule: %+v", c)
	}
	got := must(s.GetCapsule(ctx, team.ID, c.ID))(t)
	if got.Env["FOO"] != "bar" || !got.Public || got.VCPUs != 2 || got.ExpiresAt == nil ||
		!got.ExpiresAt.Equal(store.Truncate(exp)) || got.CreatedBy != "usr-1" || got.PausedAt != nil {
		t.Fatalf("GetCapsule: %+v", got)
	}
	eq(t, "unscoped", must(s.GetCapsuleUnscoped(ctx, c.ID))(t).TeamID, team.ID)
	eq(t, "allow_internet default", got.AllowInternet, false)
	testCapsuleErrorReason(t, s, team.ID)
	_, err := s.CreateCapsule(ctx, store.Capsule{ID: c.ID, TeamID: team.ID, TemplateID: "x"})
	wantErr(t, err, store.ErrAlreadyExists)
	_, err = s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: "x", Status: "sleepy"})
	wantErr(t, err, store.ErrInvalid)

	transitions := []struct {
		from, to store.CapsuleStatus
		want     bool
	}{
		{store.CapsulePending, store.CapsuleStarting, true},
		{store.CapsulePending, store.CapsuleRunning, false}, // no longer pending
		{store.CapsuleStarting, store.CapsuleRunning, true},
		{store.CapsuleRunning, store.CapsulePaused, true},
		{store.CapsulePaused, store.CapsuleHibernated, true},
		{store.CapsuleHibernated, store.CapsuleRunning, true},
	}
	var pausedAt *time.Time
	for _, tr := range transitions {
		ok := must(s.UpdateCapsuleStatus(ctx, team.ID, c.ID, tr.from, tr.to))(t)
		eq(t, fmt.Sprintf("%s→%s applied", tr.from, tr.to), ok, tr.want)
		cur := must(s.GetCapsule(ctx, team.ID, c.ID))(t)
		switch {
		case tr.want && tr.to == store.CapsulePaused:
			if cur.PausedAt == nil {
				t.Fatal("paused capsule without PausedAt")
			}
			pausedAt = cur.PausedAt
		case tr.want && tr.to == store.CapsuleHibernated:
			if cur.PausedAt == nil || !cur.PausedAt.Equal(*pausedAt) {
				t.Fatalf("hibernation changed PausedAt: %v, want %v", cur.PausedAt, pausedAt)
			}
		case tr.want && tr.to == store.CapsuleRunning && tr.from.IsPaused():
			if cur.PausedAt != nil {
				t.Fatal("resumed capsule keeps PausedAt")
			}
		}
	}
	eq(t, "status", must(s.GetCapsule(ctx, team.ID, c.ID))(t).Status, store.CapsuleRunning)

	noErr(t, s.SetCapsulePublic(ctx, team.ID, c.ID, false))
	eq(t, "public", must(s.GetCapsule(ctx, team.ID, c.ID))(t).Public, false)
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, c.ID, 600, nil))
	got = must(s.GetCapsule(ctx, team.ID, c.ID))(t)
	if got.TimeoutSec != 600 || got.ExpiresAt != nil {
		t.Fatalf("after timeout change: %+v", got)
	}
	wantErr(t, s.SetCapsuleHost(ctx, team.ID, c.ID, "host-missing"), store.ErrConflict)

	// Expiry.
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Hour)
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, c.ID, 300, &past))
	live := newCapsule(t, s, team.ID, time.Time{})
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, live.ID, 300, &future))
	paused := newCapsule(t, s, team.ID, time.Time{})
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, paused.ID, 300, &past))
	must(s.UpdateCapsuleStatus(ctx, team.ID, paused.ID, store.CapsuleRunning, store.CapsulePaused))(t)
	expired := must(s.ListExpiredCapsules(ctx, now, 10))(t)
	eq(t, "expired", len(expired), 1)
	eq(t, "expired id", expired[0].ID, c.ID)

	counts := must(s.CountCapsulesByStatus(ctx))(t)
	eq(t, "running", counts[store.CapsuleRunning], int64(2))
	eq(t, "paused", counts[store.CapsulePaused], int64(1))

	running, _, err := s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Status: store.CapsuleRunning})
	noErr(t, err)
	eq(t, "running listed", len(running), 2)
	all, _, err := s.AdminListCapsules(ctx, store.CapsuleFilter{})
	noErr(t, err)
	eq(t, "admin listed", len(all), 3)

	noErr(t, s.DeleteCapsule(ctx, team.ID, c.ID))
	wantErr(t, s.DeleteCapsule(ctx, team.ID, c.ID), store.ErrNotFound)
	_, err = s.GetCapsule(ctx, team.ID, c.ID)
	wantErr(t, err, store.ErrNotFound)
	_, _, err = s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Cursor: "!!not-base64"})
	wantErr(t, err, store.ErrInvalidCursor)
}

func testCapsulePagination(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	other := newTeam(t, s, "o")
	base := time.Now().Add(-time.Hour)
	want := map[string]bool{}
	for i := range 25 {
		// Groups of capsules share a created_at, so the id decides order.
		c := newCapsule(t, s, team.ID, base.Add(time.Duration(i/3)*time.Second))
		want[c.ID] = true
		newCapsule(t, s, other.ID, base.Add(time.Duration(i)*time.Second))
	}
	seen := map[string]bool{}
	var prev *store.Capsule
	cursor := ""
	pages := 0
	for {
		page, next, err := s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Limit: 4, Cursor: cursor})
		noErr(t, err)
		pages++
		for _, c := range page {
			if c.TeamID != team.ID {
				t.Fatalf("foreign capsule %s in page", c.ID)
			}
			if seen[c.ID] {
				t.Fatalf("capsule %s twice", c.ID)
			}
			seen[c.ID] = true
			if prev != nil && (c.CreatedAt.After(prev.CreatedAt) || (c.CreatedAt.Equal(prev.CreatedAt) && c.ID >= prev.ID)) {
				t.Fatalf("order: %s (%v) after %s (%v)", c.ID, c.CreatedAt, prev.ID, prev.CreatedAt)
			}
			prev = &c
		}
		if next == "" {
			break
		}
		cursor = next
	}
	eq(t, "capsules seen", len(seen), len(want))
	eq(t, "pages", pages, 7)
}

// testTeamIsolation: team B can neither read nor touch team A's capsules,
// keys, templates, builds or invites.
func testTeamIsolation(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	b := newTeam(t, s, "b")
	c := newCapsule(t, s, a.ID, time.Time{})
	k := must(s.CreateAPIKey(ctx, store.APIKey{TeamID: a.ID, Name: "k", Prefix: "wrn_a", Hash: "ha"}))(t)
	tpl := must(s.CreateTemplate(ctx, store.Template{TeamID: a.ID, Name: "private"}))(t)
	bld := must(s.CreateBuild(ctx, store.Build{TeamID: a.ID, TemplateName: "private"}))(t)
	inv := must(s.CreateInvite(ctx, store.Invite{TeamID: a.ID, Email: "x@example.com", Role: store.RoleMember, TokenHash: "ti", ExpiresAt: time.Now().Add(time.Hour)}))(t)
	u := newUser(t, s, "amember@example.com", false)
	must(s.AddTeamMember(ctx, a.ID, u.ID, store.RoleMember))(t)
	must(s.InsertAuditLog(ctx, store.AuditLog{TeamID: a.ID, ActorType: store.ActorUser, Action: "capsule.create"}))(t)
	noErr(t, s.UpsertDailyUsage(ctx, []store.DailyUsage{{TeamID: a.ID, Day: time.Now(), CPUMinutes: 5}}))
	noErr(t, s.InsertMetricSnapshots(ctx, []store.MetricSnapshot{{CapsuleID: c.ID, TeamID: a.ID, TS: time.Now(), IntervalMS: 1000, CPUCores: 1}}))

	checks := []struct {
		name string
		err  error
	}{
		{"get capsule", second(s.GetCapsule(ctx, b.ID, c.ID))},
		{"delete capsule", s.DeleteCapsule(ctx, b.ID, c.ID)},
		{"set capsule host", s.SetCapsuleHost(ctx, b.ID, c.ID, "")},
		{"set capsule timeout", s.SetCapsuleTimeout(ctx, b.ID, c.ID, 1, nil)},
		{"set capsule public", s.SetCapsulePublic(ctx, b.ID, c.ID, true)},
		{"delete key", s.DeleteAPIKey(ctx, b.ID, k.ID)},
		{"get template", second(s.GetTemplate(ctx, b.ID, tpl.ID))},
		{"get template by name", second(s.GetTemplateByName(ctx, b.ID, "private"))},
		{"set template size", s.SetTemplateSize(ctx, b.ID, tpl.ID, 1)},
		{"delete template", s.DeleteTemplate(ctx, b.ID, tpl.ID)},
		{"get build", second(s.GetBuild(ctx, b.ID, bld.ID))},
		{"delete invite", s.DeleteInvite(ctx, b.ID, inv.ID)},
		{"get member", second(s.GetTeamMember(ctx, b.ID, u.ID))},
		{"update member", s.UpdateTeamMemberRole(ctx, b.ID, u.ID, store.RoleOwner)},
		{"remove member", s.RemoveTeamMember(ctx, b.ID, u.ID)},
	}
	for _, tc := range checks {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.err, store.ErrNotFound) })
	}
	ok := must(s.UpdateCapsuleStatus(ctx, b.ID, c.ID, store.CapsuleRunning, store.CapsuleStopped))(t)
	eq(t, "cross-team status change applied", ok, false)
	ok = must(s.UpdateBuildStatus(ctx, b.ID, bld.ID, []store.BuildStatus{store.BuildPending}, store.BuildCancelled, "", ""))(t)
	eq(t, "cross-team build change applied", ok, false)

	lists := []struct {
		name string
		n    int
	}{
		{"capsules", len(first3(s.ListCapsules(ctx, b.ID, store.CapsuleFilter{})))},
		{"keys", len(must(s.ListAPIKeys(ctx, b.ID))(t))},
		{"builds", len(must(s.ListBuilds(ctx, b.ID))(t))},
		{"invites", len(must(s.ListInvites(ctx, b.ID))(t))},
		{"members", len(must(s.ListTeamMembers(ctx, b.ID))(t))},
		{"audit", len(first3(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: b.ID})))},
		{"usage", len(must(s.ListDailyUsage(ctx, b.ID, time.Now().AddDate(0, 0, -1), time.Now()))(t))},
		{"team metrics", len(must(s.ListTeamMetricSnapshots(ctx, b.ID, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)))(t))},
		{"capsule metrics", len(must(s.ListCapsuleMetricSnapshots(ctx, b.ID, c.ID, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)))(t))},
	}
	for _, l := range lists {
		eq(t, "team b sees team a's "+l.name, l.n, 0)
	}
	for _, tpl := range must(s.ListTemplates(ctx, b.ID))(t) {
		if tpl.TeamID == a.ID {
			t.Fatalf("team b lists team a's template %s", tpl.ID)
		}
	}
	// Team A's data is intact.
	eq(t, "a's capsule", must(s.GetCapsule(ctx, a.ID, c.ID))(t).Status, store.CapsuleRunning)
	eq(t, "a's keys", len(must(s.ListAPIKeys(ctx, a.ID))(t)), 1)
	eq(t, "a's member", must(s.GetTeamMember(ctx, a.ID, u.ID))(t).Role, store.RoleMember)
}

func second[T any](_ T, err error) error { return err }

func first3[T any](v []T, _ string, _ error) []T { return v }

func testDeleteTeamCascades(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	u := newUser(t, s, "u@example.com", false)
	must(s.AddTeamMember(ctx, a.ID, u.ID, store.RoleOwner))(t)
	c := newCapsule(t, s, a.ID, time.Time{})
	must(s.CreateAPIKey(ctx, store.APIKey{TeamID: a.ID, Name: "k", Prefix: "p", Hash: "hk"}))(t)
	must(s.CreateTemplate(ctx, store.Template{TeamID: a.ID, Name: "t"}))(t)
	must(s.InsertAuditLog(ctx, store.AuditLog{TeamID: a.ID, ActorType: store.ActorUser, Action: "x"}))(t)
	noErr(t, s.DeleteTeam(ctx, a.ID))
	_, err := s.GetCapsuleUnscoped(ctx, c.ID)
	wantErr(t, err, store.ErrNotFound)
	_, err = s.LookupAPIKey(ctx, "hk")
	wantErr(t, err, store.ErrNotFound)
	eq(t, "memberships", len(must(s.ListTeamsForUser(ctx, u.ID))(t)), 0)
	eq(t, "templates", len(must(s.AdminListTemplates(ctx))(t)), 2)
	// The audit trail outlives the team.
	eq(t, "audit kept", len(first3(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: a.ID}))), 1)
	// The user remains.
	must(s.GetUser(ctx, u.ID))(t)
}

// ---- audit ----

func testAudit(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	type row struct {
		team, actor, rtype, action string
		scope                      store.AuditScope
		at                         time.Duration
	}
	rows := []row{
		{a.ID, "usr-1", "capsule", "create", store.ScopeTeam, 0},
		{a.ID, "usr-1", "capsule", "delete", store.ScopeTeam, time.Minute},
		{a.ID, "usr-2", "api_key", "create", store.ScopeTeam, 2 * time.Minute},
		{store.PlatformTeamID, "usr-9", "user", "grant_admin", store.ScopeAdmin, 3 * time.Minute},
		{store.PlatformTeamID, "usr-9", "team", "set_byoc", store.ScopeAdmin, 4 * time.Minute},
	}
	for _, r := range rows {
		e := must(s.InsertAuditLog(ctx, store.AuditLog{
			TeamID: r.team, ActorType: store.ActorUser, ActorID: r.actor, ActorName: r.actor, ResourceType: r.rtype,
			ResourceID: "r", Action: r.action, Scope: r.scope, Metadata: []byte(`{"k":"v"}`), CreatedAt: t0.Add(r.at),
		}))(t)
		if e.ID == 0 {
			t.Fatal("audit entry without id")
		}
	}
	_, err := s.InsertAuditLog(ctx, store.AuditLog{TeamID: a.ID, ActorType: "robot", Action: "x"})
	wantErr(t, err, store.ErrInvalid)

	tests := []struct {
		name string
		f    store.AuditFilter
		want int
	}{
		{"team", store.AuditFilter{TeamID: a.ID}, 3},
		{"admin scope", store.AuditFilter{Scope: store.ScopeAdmin}, 2},
		{"platform team admin", store.AuditFilter{TeamID: store.PlatformTeamID, Scope: store.ScopeAdmin}, 2},
		{"everything", store.AuditFilter{}, 5},
		{"actor", store.AuditFilter{TeamID: a.ID, ActorID: "usr-1"}, 2},
		{"resource type", store.AuditFilter{ResourceType: "capsule"}, 2},
		{"action", store.AuditFilter{Action: "create"}, 2},
		{"from", store.AuditFilter{From: t0.Add(time.Minute)}, 4},
		{"to (exclusive)", store.AuditFilter{To: t0.Add(time.Minute)}, 1},
		{"range", store.AuditFilter{From: t0.Add(time.Minute), To: t0.Add(3 * time.Minute)}, 2},
		{"combined", store.AuditFilter{TeamID: a.ID, ActorID: "usr-1", Action: "delete"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, next := must2(t)(s.ListAuditLogs(ctx, tc.f))
			eq(t, "entries", len(got), tc.want)
			eq(t, "next", next, "")
		})
	}
	got, _ := must2(t)(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: a.ID}))
	eq(t, "newest first", got[0].Action, "create")
	eq(t, "newest first type", got[0].ResourceType, "api_key")
	eq(t, "created at", got[0].CreatedAt.Equal(t0.Add(2*time.Minute)), true)
	eq(t, "metadata", len(got[0].Metadata) > 0, true)
	eq(t, "scope default", got[0].Scope, store.ScopeTeam)

	n := must(s.AnonymizeUserAuditLogs(ctx, "usr-1"))(t)
	eq(t, "anonymised", n, int64(2))
	eq(t, "usr-1 entries left", len(first3(s.ListAuditLogs(ctx, store.AuditFilter{ActorID: "usr-1"}))), 0)
	eq(t, "entries kept", len(first3(s.ListAuditLogs(ctx, store.AuditFilter{TeamID: a.ID}))), 3)
}

// testAuditPaginationConcurrent pages through the log while other goroutines
// insert. Every entry that existed before the first page and sorts after it
// is seen exactly once (no duplicates, no skips), and no entry whose insert
// began after the first page was read shows up behind the cursor.
func testAuditPaginationConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "t")
	existing := 300
	if testing.Short() {
		existing = 120
	}
	base := time.Now().Add(-time.Hour)
	seeded := make([]int64, 0, existing)
	for i := range existing {
		// Many share a timestamp, so the id tie-break matters.
		e := must(s.InsertAuditLog(ctx, store.AuditLog{
			TeamID: team.ID, ActorType: store.ActorSystem, Action: "seed", CreatedAt: base.Add(time.Duration(i/7) * time.Millisecond),
		}))(t)
		seeded = append(seeded, e.ID)
	}

	// live records each concurrent insert: when it began and when it returned.
	type live struct {
		entry         store.AuditLog
		began, landed time.Time
	}
	var mu sync.Mutex
	var lives []live
	stop := make(chan struct{})
	var wg sync.WaitGroup
	insErr := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				began := time.Now()
				e, err := s.InsertAuditLog(ctx, store.AuditLog{TeamID: team.ID, ActorType: store.ActorSystem, Action: "live"})
				if err != nil {
					insErr <- err
					return
				}
				mu.Lock()
				lives = append(lives, live{e, began, time.Now()})
				mu.Unlock()
			}
		}()
	}
	for { // let some live entries land before the first page
		mu.Lock()
		n := len(lives)
		mu.Unlock()
		if n >= 5 {
			break
		}
		time.Sleep(time.Millisecond)
	}

	seenOn := map[int64]int{} // entry id → page number
	var firstLast store.AuditLog
	var firstStart, firstDone time.Time
	cursor := ""
	for page := 0; ; page++ {
		if page == 0 {
			firstStart = time.Now()
		}
		entries, next, err := s.ListAuditLogs(ctx, store.AuditFilter{TeamID: team.ID, Cursor: cursor, Limit: 17})
		if page == 0 {
			firstDone = time.Now()
		}
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		for _, e := range entries {
			if p, dup := seenOn[e.ID]; dup {
				close(stop)
				wg.Wait()
				t.Fatalf("entry %d on pages %d and %d", e.ID, p, page)
			}
			seenOn[e.ID] = page
		}
		if page == 0 {
			firstLast = entries[len(entries)-1]
		}
		if next == "" {
			break
		}
		cursor = next
		time.Sleep(time.Millisecond) // let the inserters interleave
	}
	close(stop)
	wg.Wait()
	close(insErr)
	for err := range insErr {
		t.Fatal(err)
	}
	if len(lives) == 0 {
		t.Fatal("no concurrent inserts happened")
	}
	behind := func(e store.AuditLog) bool { // sorts after the first page's last entry
		return e.CreatedAt.Before(firstLast.CreatedAt) || (e.CreatedAt.Equal(firstLast.CreatedAt) && e.ID < firstLast.ID)
	}
	for _, id := range seeded {
		if _, ok := seenOn[id]; !ok {
			t.Fatalf("pre-existing entry %d skipped", id)
		}
	}
	for _, l := range lives {
		p, seen := seenOn[l.entry.ID]
		switch {
		case l.landed.Before(firstStart) && behind(l.entry) && !seen:
			t.Fatalf("entry %d existed before the first page, sorts behind it, and was skipped", l.entry.ID)
		case l.began.After(firstDone) && seen && p > 0:
			t.Fatalf("entry %d, inserted after the first page, appeared behind the cursor on page %d", l.entry.ID, p)
		}
	}
	t.Logf("paged %d entries while %d were inserted", len(seenOn), len(lives))
}

// ---- usage ----

func testMetrics(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	b := newTeam(t, s, "b")
	t0 := time.Date(2026, 5, 1, 23, 59, 58, 0, time.UTC)
	var snaps []store.MetricSnapshot
	for i := range 4 {
		snaps = append(snaps,
			store.MetricSnapshot{CapsuleID: "cl-1", TeamID: a.ID, TS: t0.Add(time.Duration(i) * time.Second), IntervalMS: 1000, CPUCores: 0.5, MemBytes: 1 << 20},
			store.MetricSnapshot{CapsuleID: "cl-2", TeamID: b.ID, TS: t0.Add(time.Duration(i) * time.Second), IntervalMS: 1000, CPUCores: 1, MemBytes: 2 << 20},
		)
	}
	noErr(t, s.InsertMetricSnapshots(ctx, snaps))
	noErr(t, s.InsertMetricSnapshots(ctx, nil))

	got := must(s.ListCapsuleMetricSnapshots(ctx, a.ID, "cl-1", t0, t0.Add(time.Hour)))(t)
	eq(t, "capsule snapshots", len(got), 4)
	if got[0].CPUCores != 0.5 || got[0].MemBytes != 1<<20 || got[0].IntervalMS != 1000 || !got[0].TS.Equal(t0) {
		t.Fatalf("snapshot: %+v", got[0])
	}
	day2 := time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)
	eq(t, "day 1 only", len(must(s.ListTeamMetricSnapshots(ctx, a.ID, t0.Add(-time.Hour), day2))(t)), 2)
	eq(t, "day 2 only", len(must(s.ListTeamMetricSnapshots(ctx, a.ID, day2, day2.Add(24*time.Hour)))(t)), 2)
	teams := must(s.ListTeamsWithMetricSnapshots(ctx, t0, day2))(t)
	want := []string{a.ID, b.ID}
	slices.Sort(want)
	if !slices.Equal(teams, want) {
		t.Fatalf("teams with snapshots: got %v, want %v", teams, want)
	}
	sums := must(s.SumUsage(ctx, "", t0.Add(-time.Hour), day2.Add(time.Hour)))(t)
	eq(t, "teams summed", len(sums), 2)
	for _, u := range sums {
		// a: 4 s at 0.5 cores and 1 MiB; b: 4 s at 1 core and 2 MiB.
		wantCPU, wantRAM := 4*0.5/60, 4*1.0/60
		if u.TeamID == b.ID {
			wantCPU, wantRAM = 4*1.0/60, 4*2.0/60
		}
		if !near(u.CPUMinutes, wantCPU) || !near(u.RAMMBMinutes, wantRAM) {
			t.Fatalf("usage of %s: got %+v, want cpu %v ram %v", u.TeamID, u, wantCPU, wantRAM)
		}
	}
	dayA := must(s.SumUsage(ctx, a.ID, t0.Add(-time.Hour), day2))(t)
	eq(t, "one team", len(dayA), 1)
	eq(t, "day 1 cpu (2 samples)", near(dayA[0].CPUMinutes, 2*0.5/60), true)
	eq(t, "empty range", len(must(s.SumUsage(ctx, a.ID, day2.Add(time.Hour), day2.Add(2*time.Hour)))(t)), 0)
	eq(t, "deleted", must(s.DeleteMetricSnapshotsBefore(ctx, day2))(t), int64(4))
	eq(t, "left", len(must(s.ListTeamMetricSnapshots(ctx, a.ID, t0, day2.Add(time.Hour)))(t)), 2)
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func testDailyUsage(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	a := newTeam(t, s, "a")
	d1 := time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC)
	// A time late in the day in another zone still names its UTC day.
	d2 := time.Date(2026, 2, 1, 23, 30, 0, 0, time.FixedZone("X", -5*3600)) // 2026-02-02 04:30 UTC
	rows := []store.DailyUsage{
		{TeamID: a.ID, Day: d1, CPUMinutes: 10, RAMMBMinutes: 1000},
		{TeamID: a.ID, Day: d2, CPUMinutes: 20, RAMMBMinutes: 2000},
	}
	noErr(t, s.UpsertDailyUsage(ctx, rows))
	first := must(s.ListDailyUsage(ctx, a.ID, d1, d1.AddDate(0, 0, 5)))(t)
	noErr(t, s.UpsertDailyUsage(ctx, rows)) // idempotent
	noErr(t, s.UpsertDailyUsage(ctx, rows))
	again := must(s.ListDailyUsage(ctx, a.ID, d1, d1.AddDate(0, 0, 5)))(t)
	eq(t, "rows", len(again), 2)
	for i := range again {
		if again[i].CPUMinutes != first[i].CPUMinutes || again[i].RAMMBMinutes != first[i].RAMMBMinutes || !again[i].Day.Equal(first[i].Day) {
			t.Fatalf("upsert not idempotent: %+v vs %+v", again[i], first[i])
		}
	}
	eq(t, "day 1", again[0].Day.Equal(d1), true)
	eq(t, "day 2 (UTC)", again[1].Day.Equal(time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)), true)
	eq(t, "cpu", again[1].CPUMinutes, 20.0)

	// A recomputation replaces the figures.
	noErr(t, s.UpsertDailyUsage(ctx, []store.DailyUsage{{TeamID: a.ID, Day: d1, CPUMinutes: 11, RAMMBMinutes: 1100}}))
	got := must(s.ListDailyUsage(ctx, a.ID, d1, d1))(t)
	eq(t, "inclusive single day", len(got), 1)
	eq(t, "replaced", got[0].CPUMinutes, 11.0)
	eq(t, "range excludes", len(must(s.ListDailyUsage(ctx, a.ID, d1.AddDate(0, 0, 1), d1.AddDate(0, 0, 1)))(t)), 0)
}

// ---- leases ----

func testLeases(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	t0 := time.Now().Truncate(time.Millisecond)
	try := func(holder string, now time.Time) bool {
		t.Helper()
		return must(s.TryLease(ctx, "reconcile", holder, now, now.Add(30*time.Second)))(t)
	}
	eq(t, "a takes a free lease", try("a", t0), true)
	eq(t, "b while a holds it", try("b", t0.Add(time.Second)), false)
	eq(t, "a renews", try("a", t0.Add(20*time.Second)), true)
	eq(t, "b before the renewal expires", try("b", t0.Add(45*time.Second)), false)
	eq(t, "b after it expired", try("b", t0.Add(51*time.Second)), true)
	eq(t, "a lost it", try("a", t0.Add(52*time.Second)), false)
	eq(t, "another name is independent", must(s.TryLease(ctx, "usage", "a", t0, t0.Add(time.Minute)))(t), true)
	noErr(t, s.ReleaseLease(ctx, "reconcile", "a")) // not a's: no effect
	eq(t, "a after releasing what it did not hold", try("a", t0.Add(53*time.Second)), false)
	noErr(t, s.ReleaseLease(ctx, "reconcile", "b"))
	eq(t, "a after b released", try("a", t0.Add(54*time.Second)), true)
}

// testLeasesConcurrent: of many holders racing for one free lease at the
// same instant, exactly one gets it.
func testLeasesConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	now := time.Now()
	const n = 16
	var wg sync.WaitGroup
	got := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = s.TryLease(ctx, "race", fmt.Sprintf("replica-%d", i), now, now.Add(time.Minute))
		})
	}
	wg.Wait()
	winners := 0
	for i := range n {
		noErr(t, errs[i])
		if got[i] {
			winners++
		}
	}
	eq(t, "holders that got the lease", winners, 1)
}

// testCapsuleLifecycle: on_timeout/auto_resume at create and after,
// pause reasons, the timeout and retention queries, template and team
// defaults (docs/LIFECYCLE.md).
func testCapsuleLifecycle(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	team := newTeam(t, s, "lc")
	other := newTeam(t, s, "lc-other")
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Hour)

	kill := newCapsule(t, s, team.ID, time.Time{})
	eq(t, "default on_timeout", kill.OnTimeout, store.OnTimeoutKill)
	eq(t, "default auto_resume", kill.AutoResume, false)
	eq(t, "default pause reason", kill.PauseReason, "")
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, kill.ID, 300, &past))

	pause := must(s.CreateCapsule(ctx, store.Capsule{
		TeamID: team.ID, TemplateID: "tpl-base", Status: store.CapsuleRunning, VCPUs: 1, MemoryMB: 512,
		DiskSizeMB: 5120, TimeoutSec: 300, AccessTokenHash: "ath", ExpiresAt: &past,
		OnTimeout: store.OnTimeoutPause, AutoResume: true,
	}))(t)
	eq(t, "on_timeout", pause.OnTimeout, store.OnTimeoutPause)
	eq(t, "auto_resume", pause.AutoResume, true)
	later := newCapsule(t, s, team.ID, time.Time{})
	noErr(t, s.SetCapsuleLifecycle(ctx, team.ID, later.ID, store.OnTimeoutPause, false))
	noErr(t, s.SetCapsuleTimeout(ctx, team.ID, later.ID, 300, &future))
	wantErr(t, s.SetCapsuleLifecycle(ctx, other.ID, later.ID, store.OnTimeoutPause, false), store.ErrNotFound)

	due := must(s.ListTimedOutPausable(ctx, now, 10))(t)
	eq(t, "timed out pausable", len(due), 1)
	eq(t, "timed out id", due[0].ID, pause.ID)

	// Paused by its timeout: listed by retention once paused long enough;
	// one paused by a user is never listed.
	must(s.UpdateCapsuleStatus(ctx, team.ID, pause.ID, store.CapsuleRunning, store.CapsuleHibernated))(t)
	noErr(t, s.SetCapsulePauseReason(ctx, team.ID, pause.ID, store.PauseReasonTimeout))
	must(s.UpdateCapsuleStatus(ctx, team.ID, later.ID, store.CapsuleRunning, store.CapsuleHibernated))(t)
	noErr(t, s.SetCapsulePauseReason(ctx, team.ID, later.ID, store.PauseReasonUser))
	eq(t, "pause reason", must(s.GetCapsule(ctx, team.ID, pause.ID))(t).PauseReason, store.PauseReasonTimeout)
	eq(t, "retention before the pause", len(must(s.ListRetentionExpired(ctx, now.Add(-time.Hour), 10))(t)), 0)
	expired := must(s.ListRetentionExpired(ctx, now.Add(time.Hour), 10))(t)
	eq(t, "retention expired", len(expired), 1)
	eq(t, "retention id", expired[0].ID, pause.ID)
	eq(t, "timed out after the pause", len(must(s.ListTimedOutPausable(ctx, now, 10))(t)), 0)

	// Template and team defaults.
	p, yes := store.OnTimeoutPause, true
	tpl := must(s.CreateTemplate(ctx, store.Template{TeamID: team.ID, Name: "lc-tpl"}))(t)
	if tpl.Lifecycle.OnTimeout != nil || tpl.Lifecycle.AutoResume != nil {
		t.Fatalf("new template lifecycle = %+v, want unset", tpl.Lifecycle)
	}
	noErr(t, s.SetTemplateLifecycle(ctx, team.ID, tpl.ID, store.LifecycleDefaults{OnTimeout: &p, AutoResume: &yes}))
	got := must(s.GetTemplate(ctx, team.ID, tpl.ID))(t).Lifecycle
	if got.OnTimeout == nil || *got.OnTimeout != p || got.AutoResume == nil || !*got.AutoResume {
		t.Fatalf("template lifecycle = %+v", got)
	}
	wantErr(t, s.SetTemplateLifecycle(ctx, other.ID, tpl.ID, store.LifecycleDefaults{}), store.ErrNotFound)
	noErr(t, s.SetTeamLifecycle(ctx, team.ID, store.LifecycleDefaults{OnTimeout: &p}))
	tl := must(s.GetTeam(ctx, team.ID))(t).Lifecycle
	if tl.OnTimeout == nil || *tl.OnTimeout != p || tl.AutoResume != nil {
		t.Fatalf("team lifecycle = %+v", tl)
	}
}
