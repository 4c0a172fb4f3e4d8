package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestAuth(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("ada@example.com")

		t.Run("duplicate signup", func(t *testing.T) {
			r := e.want(e.do("POST", "/v1/auth/signup", "", map[string]string{"email": "ADA@example.com", "password": "another password"}), 409)
			if got := r.str(t, "code"); got != "already_exists" {
				t.Fatalf("code = %q, want already_exists", got)
			}
		})
		t.Run("login", func(t *testing.T) {
			e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": "ada@example.com", "password": "wrong password"}), 401)
			e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": "nobody@example.com", "password": "whatever1"}), 401)
			r := e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": "Ada@Example.com", "password": "correct horse battery"}), 200)
			tok := r.str(t, "token")
			me := e.want(e.do("GET", "/v1/me", tok, nil), 200).json(t)
			if me["user_id"] != u.id || me["team_id"] != u.team || me["role"] != "owner" || me["is_admin"] != false {
				t.Fatalf("me = %v", me)
			}
		})
		t.Run("me with API key, both headers", func(t *testing.T) {
			key := e.apiKey(u, "ci")
			if !strings.HasPrefix(key, "wrn_") {
				t.Fatalf("key %q lacks wrn_ prefix", key)
			}
			for _, hdr := range [][]string{{"X-API-Key", key}, {"Authorization", "Bearer " + key}} {
				me := e.want(e.do("GET", "/v1/me", "", nil, hdr...), 200).json(t)
				if me["user_id"] != u.id || me["email"] != u.email || me["team_id"] != u.team || me["auth"] != "api_key" || me["role"] != "owner" {
					t.Fatalf("me via %s = %v", hdr[0], me)
				}
			}
			// Only the hash and the prefix are stored.
			keys, err := st.ListAPIKeys(context.Background(), u.team)
			if err != nil || len(keys) != 1 {
				t.Fatalf("ListAPIKeys = %v, %v", keys, err)
			}
			if keys[0].Hash == key || keys[0].Hash != auth.HashToken(key) || !strings.HasPrefix(key, keys[0].Prefix) {
				t.Fatalf("stored key %+v does not match hash/prefix of the shown key", keys[0])
			}
			list := e.want(e.do("GET", "/v1/api-keys", u.token, nil), 200)
			if strings.Contains(string(list.body), key) {
				t.Fatal("listing API keys shows the secret")
			}
			e.want(e.do("DELETE", "/v1/api-keys/"+keys[0].ID, u.token, nil), 204)
			e.want(e.do("GET", "/v1/me", key, nil), 401)
			logs, _, err := st.ListAuditLogs(context.Background(), store.AuditFilter{TeamID: u.team, ResourceType: "api_key"})
			if err != nil || len(logs) != 2 {
				t.Fatalf("api key audit entries = %+v, %v", logs, err)
			}
			for _, l := range logs {
				if l.ResourceID != keys[0].ID || l.ActorID != u.id || l.ActorType != store.ActorUser || l.Scope != store.ScopeTeam || l.Status != store.AuditSuccess {
					t.Fatalf("audit entry %+v", l)
				}
			}
			if logs[0].Action != "delete" || logs[1].Action != "create" {
				t.Fatalf("audit actions newest first = %s, %s", logs[0].Action, logs[1].Action)
			}
		})
		t.Run("bad credentials", func(t *testing.T) {
			expiredIssuer, _ := auth.NewSessions(auth.DeriveKey(testKey, "session"), time.Hour)
			expiredIssuer.SetClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
			expired, _, _ := expiredIssuer.Issue(u.id, u.team, "")
			otherKey, _ := auth.NewSessions([]byte("another-key-another-key-another-key!"), time.Hour)
			forged, _, _ := otherKey.Issue(u.id, u.team, "")
			for name, cred := range map[string]string{
				"expired":       expired,
				"forged":        forged,
				"garbage":       "not-a-token",
				"unknown key":   auth.GenerateAPIKey().Plain,
				"malformed key": "wrn_short",
				"none":          "",
			} {
				r := e.want(e.do("GET", "/v1/me", cred, nil), 401)
				if r.str(t, "code") != "unauthenticated" {
					t.Errorf("%s: body %s", name, r.body)
				}
				if name == "expired" && !strings.Contains(r.str(t, "message"), "expired") {
					t.Errorf("expired token message = %q, want it to say expired", r.str(t, "message"))
				}
			}
		})
		t.Run("deactivated user", func(t *testing.T) {
			v := e.signup("vic@example.com")
			key := e.apiKey(v, "k")
			// Keep another admin so deactivation is allowed.
			if err := st.SetUserActive(context.Background(), v.id, false); err != nil {
				t.Fatal(err)
			}
			e.want(e.do("GET", "/v1/me", v.token, nil), 401)
			e.want(e.do("GET", "/v1/me", key, nil), 401)
			e.want(e.do("POST", "/v1/auth/login", "", map[string]string{"email": v.email, "password": "correct horse battery"}), 401)
		})
	})
}

func TestPasswordHashing(t *testing.T) {
	h, err := auth.HashPassword("s3cret-pass")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$") {
		t.Fatalf("hash %q is not argon2id", h)
	}
	if err := auth.CheckPassword("s3cret-pass", h); err != nil {
		t.Fatalf("right password rejected: %v", err)
	}
	for _, bad := range []string{"s3cret-pasS", "", "s3cret-pass "} {
		if auth.CheckPassword(bad, h) == nil {
			t.Fatalf("wrong password %q accepted", bad)
		}
	}
	if auth.CheckPassword("x", "") == nil {
		t.Fatal("empty hash accepted")
	}
}

func TestTeams(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		owner := e.signup("olga@example.com")
		bob := e.signup("bob@example.com")

		team := e.want(e.do("POST", "/v1/teams", owner.token, map[string]string{"name": "Research"}), 201).str(t, "id")
		e.want(e.do("PATCH", "/v1/teams/"+team+"/", owner.token, map[string]string{"name": "Research & Dev"}), 200)

		// Invite bob; only he can accept.
		inv := e.want(e.do("POST", "/v1/teams/"+team+"/invites", owner.token, map[string]string{"email": bob.email, "role": "member"}), 201)
		tok := inv.str(t, "token")
		carol := e.signup("carol@example.com")
		e.want(e.do("POST", "/v1/invites/accept", carol.token, map[string]string{"token": tok}), 404)
		e.want(e.do("POST", "/v1/invites/accept", bob.token, map[string]string{"token": tok}), 200)
		e.want(e.do("POST", "/v1/invites/accept", bob.token, map[string]string{"token": tok}), 409)

		// Switch: the new token carries the team.
		sw := e.want(e.do("POST", "/v1/teams/"+team+"/switch", bob.token, nil), 200)
		bobInTeam := sw.str(t, "token")
		me := e.want(e.do("GET", "/v1/me", bobInTeam, nil), 200).json(t)
		if me["team_id"] != team || me["role"] != "member" {
			t.Fatalf("after switch me = %v", me)
		}
		// Members may not manage keys or rename; admins may.
		e.want(e.do("POST", "/v1/api-keys", bobInTeam, map[string]string{"name": "x"}), 403)
		e.want(e.do("PATCH", "/v1/teams/"+team+"/", bob.token, map[string]string{"name": "mine"}), 403)
		e.want(e.do("PATCH", "/v1/teams/"+team+"/members/"+bob.id, owner.token, map[string]string{"role": "admin"}), 200)
		e.want(e.do("POST", "/v1/api-keys", bobInTeam, map[string]string{"name": "x"}), 201)
		// An admin cannot make an owner.
		e.want(e.do("PATCH", "/v1/teams/"+team+"/members/"+bob.id, bob.token, map[string]string{"role": "owner"}), 403)
		// The last owner cannot step down or leave.
		e.want(e.do("PATCH", "/v1/teams/"+team+"/members/"+owner.id, owner.token, map[string]string{"role": "member"}), 409)
		e.want(e.do("DELETE", "/v1/teams/"+team+"/members/"+owner.id, owner.token, nil), 409)

		ms := e.want(e.do("GET", "/v1/teams/"+team+"/members", bob.token, nil), 200).json(t)["members"].([]any)
		if len(ms) != 2 {
			t.Fatalf("members = %v", ms)
		}
		// Removing bob ends his access to the team at once.
		e.want(e.do("DELETE", "/v1/teams/"+team+"/members/"+bob.id, owner.token, nil), 204)
		e.want(e.do("GET", "/v1/capsules", bobInTeam, nil), 403)
		e.want(e.do("POST", "/v1/teams/"+team+"/switch", bob.token, nil), 404)

		// Only an owner deletes; then it is gone.
		e.want(e.do("DELETE", "/v1/teams/"+team+"/", carol.token, nil), 404)
		e.want(e.do("DELETE", "/v1/teams/"+team+"/", owner.token, nil), 204)
		teams := e.want(e.do("GET", "/v1/teams", owner.token, nil), 200).json(t)["teams"].([]any)
		if len(teams) != 1 {
			t.Fatalf("teams after delete = %v", teams)
		}
		// Team actions were audited under the team, with the actor.
		platform, _, err := st.ListAuditLogs(context.Background(), store.AuditFilter{TeamID: store.PlatformTeamID, Scope: store.ScopeAdmin})
		if err != nil || len(platform) == 0 || platform[0].Action != "delete" || platform[0].ResourceID != team || platform[0].ActorID != owner.id {
			t.Fatalf("admin-scope trace of the team deletion: %+v, %v", platform, err)
		}
	})
}
