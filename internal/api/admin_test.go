package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// auditActions returns the actions of admin-scope entries about resourceID.
func auditActions(t *testing.T, st store.Store, resourceID string) []string {
	t.Helper()
	es, _, err := st.ListAuditLogs(context.Background(), store.AuditFilter{TeamID: store.PlatformTeamID, Scope: store.ScopeAdmin, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if e.ResourceID == resourceID {
			out = append(out, e.Action+":"+string(e.Status))
		}
	}
	return out
}

func TestAdminUsers(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		root := e.signup("root@example.com")
		e.makeAdmin(root)
		alice := e.signup("alice@example.com")
		e.signup("bob@example.com")

		// List and search.
		all := e.want(e.do("GET", "/v1/admin/users", root.token, nil), 200).json(t)["users"].([]any)
		if len(all) != 3 {
			t.Fatalf("users = %d, want 3", len(all))
		}
		found := e.want(e.do("GET", "/v1/admin/users?q=ALICE&limit=10", root.token, nil), 200).json(t)["users"].([]any)
		if len(found) != 1 || found[0].(map[string]any)["id"] != alice.id {
			t.Fatalf("search = %v", found)
		}
		e.want(e.do("GET", "/v1/admin/users?limit=0", root.token, nil), 400)
		e.want(e.do("GET", "/v1/admin/users/usr-nope", root.token, nil), 404)
		e.want(e.do("GET", "/v1/admin/users/"+alice.id, root.token, nil), 200)

		// Deactivate: alice's session stops working; activate restores it.
		for _, tc := range []struct {
			body       any
			wantStatus int
		}{
			{map[string]any{}, 400},
			{map[string]any{"active": "no"}, 400},
			{`{"active":false,"x":1}`, 400},
		} {
			e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/active", root.token, tc.body), tc.wantStatus)
		}
		if got := e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/active", root.token, map[string]bool{"active": false}), 200).str(t, "status"); got != "inactive" {
			t.Fatalf("status = %q", got)
		}
		e.want(e.do("GET", "/v1/me", alice.token, nil), 401)
		e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/active", root.token, map[string]bool{"active": true}), 200)
		e.want(e.do("GET", "/v1/me", alice.token, nil), 200)
		// The only admin cannot deactivate themselves.
		if r := e.want(e.do("PUT", "/v1/admin/users/"+root.id+"/active", root.token, map[string]bool{"active": false}), 409); r.str(t, "code") != "conflict" {
			t.Fatalf("body %s", r.body)
		}

		// Grant is idempotent; revoke of the last admin is a clear 409.
		for i, wantChanged := range []bool{true, false} {
			r := e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/admin", root.token, map[string]bool{"admin": true}), 200).json(t)
			if r["changed"] != wantChanged || r["user"].(map[string]any)["is_admin"] != true {
				t.Fatalf("grant #%d = %v", i, r)
			}
		}
		e.want(e.do("GET", "/v1/admin/users", alice.token, nil), 200)
		e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/admin", root.token, map[string]bool{"admin": false}), 200)
		if r := e.want(e.do("PUT", "/v1/admin/users/"+alice.id+"/admin", root.token, map[string]bool{"admin": false}), 200).json(t); r["changed"] != false {
			t.Fatalf("second revoke = %v", r)
		}
		e.want(e.do("GET", "/v1/admin/users", alice.token, nil), 403)
		last := e.want(e.do("PUT", "/v1/admin/users/"+root.id+"/admin", root.token, map[string]bool{"admin": false}), 409)
		if msg := last.str(t, "message"); msg == "" || last.str(t, "code") != "conflict" {
			t.Fatalf("last-admin answer %s", last.body)
		}
		e.want(e.do("DELETE", "/v1/admin/users/"+root.id, root.token, nil), 409)
		if n, err := st.CountActiveAdmins(context.Background()); err != nil || n != 1 {
			t.Fatalf("admins = %d, %v", n, err)
		}
		if got := auditActions(t, st, root.id); fmt.Sprint(got) != "[delete:failure revoke_admin:failure deactivate:failure]" {
			t.Fatalf("root's admin audit entries = %v", got)
		}
		gotAlice := auditActions(t, st, alice.id)
		wantAlice := []string{"revoke_admin:success", "revoke_admin:success", "grant_admin:success", "grant_admin:success", "activate:success", "deactivate:success"}
		if fmt.Sprint(gotAlice) != fmt.Sprint(wantAlice) {
			t.Fatalf("alice's admin audit entries = %v, want %v", gotAlice, wantAlice)
		}

		// Deleting a user anonymises their audit entries and ends their sessions.
		e.apiKey(alice, "alice-key")
		before, _, err := st.ListAuditLogs(context.Background(), store.AuditFilter{TeamID: alice.team, ActorID: alice.id})
		if err != nil || len(before) == 0 {
			t.Fatalf("alice's team entries before delete: %v %v", before, err)
		}
		e.want(e.do("DELETE", "/v1/admin/users/"+alice.id, root.token, nil), 204)
		e.want(e.do("DELETE", "/v1/admin/users/"+alice.id, root.token, nil), 404)
		e.want(e.do("GET", "/v1/me", alice.token, nil), 401)
		after, _, err := st.ListAuditLogs(context.Background(), store.AuditFilter{TeamID: alice.team, ActorID: alice.id})
		if err != nil || len(after) != 0 {
			t.Fatalf("entries still name alice after delete: %v %v", after, err)
		}
		page := e.want(e.do("GET", "/v1/admin/audit-logs?team_id="+alice.team+"&resource_type=api_key", root.token, nil), 200).json(t)
		entries := page["entries"].([]any)
		if len(entries) != 1 {
			t.Fatalf("entries = %v", entries)
		}
		if en := entries[0].(map[string]any); en["actor_name"] == alice.email || en["actor_id"] == alice.id {
			t.Fatalf("entry not anonymised: %v", en)
		}
		if got := auditActions(t, st, alice.id); len(got) == 0 || got[0] != "delete:success" {
			t.Fatalf("delete not audited: %v", got)
		}
	})
}

func TestAdminTeamsTemplatesBuildsCapsules(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		e := newEnv(t, st)
		root := e.signup("root@example.com")
		e.makeAdmin(root)
		owner := e.signup("owner@example.com")
		key := e.apiKey(owner, "k")

		// Teams: list, BYOC toggle.
		teams := e.want(e.do("GET", "/v1/admin/teams", root.token, nil), 200).json(t)["teams"].([]any)
		if len(teams) < 3 { // platform + two personal teams
			t.Fatalf("teams = %v", teams)
		}
		e.want(e.do("PUT", "/v1/admin/teams/"+owner.team+"/byoc", root.token, map[string]any{}), 400)
		if r := e.want(e.do("PUT", "/v1/admin/teams/"+owner.team+"/byoc", root.token, map[string]bool{"byoc": true}), 200).json(t); r["is_byoc"] != true {
			t.Fatalf("byoc = %v", r)
		}
		if tm, err := st.GetTeam(ctx, owner.team); err != nil || !tm.IsBYOC {
			t.Fatalf("team = %+v, %v", tm, err)
		}
		e.want(e.do("PUT", "/v1/admin/teams/"+owner.team+"/byoc", root.token, map[string]bool{"byoc": false}), 200)
		e.want(e.do("DELETE", "/v1/admin/teams/"+store.PlatformTeamID, root.token, nil), 409)

		// Capsules of every team; one on an unreachable host.
		hostID, _ := e.registerHost(root, "127.0.0.1:1", "")
		onHost := e.insertCapsule(owner.team, hostID)
		unplaced := e.insertCapsule(owner.team, "")
		rootCaps := e.insertCapsule(root.team, "")
		list := e.want(e.do("GET", "/v1/admin/capsules?limit=2", root.token, nil), 200).json(t)
		if len(list["capsules"].([]any)) != 2 || list["next_cursor"] == "" {
			t.Fatalf("page 1 = %v", list)
		}
		rest := e.want(e.do("GET", "/v1/admin/capsules?cursor="+list["next_cursor"].(string), root.token, nil), 200).json(t)
		if len(rest["capsules"].([]any)) != 1 {
			t.Fatalf("page 2 = %v", rest)
		}
		e.want(e.do("GET", "/v1/admin/capsules?status=bogus", root.token, nil), 400)
		if got := e.want(e.do("GET", "/v1/admin/capsules/"+onHost.ID, root.token, nil), 200).str(t, "team_id"); got != owner.team {
			t.Fatalf("team_id = %q", got)
		}
		// The host cannot be reached: 503 unless forced.
		e.want(e.do("DELETE", "/v1/admin/capsules/"+onHost.ID, root.token, nil), 503)
		e.want(e.do("POST", "/v1/admin/capsules/"+onHost.ID+"/pause", root.token, nil), 503)
		e.want(e.do("POST", "/v1/admin/capsules/"+onHost.ID+"/resume", root.token, nil), 409)
		e.want(e.do("DELETE", "/v1/admin/capsules/"+rootCaps.ID, root.token, nil), 204)
		e.want(e.do("GET", "/v1/admin/capsules/"+rootCaps.ID, root.token, nil), 404)
		if got := auditActions(t, st, onHost.ID); fmt.Sprint(got) != "[pause:failure delete:failure]" {
			t.Fatalf("capsule audit = %v", got)
		}

		// Templates and builds.
		tpl, err := st.CreateTemplate(ctx, store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: owner.team, Name: "custom"})
		if err != nil {
			t.Fatal(err)
		}
		tpls := e.want(e.do("GET", "/v1/admin/templates", root.token, nil), 200).json(t)["templates"].([]any)
		if len(tpls) == 0 {
			t.Fatal("no templates listed")
		}
		e.want(e.do("DELETE", "/v1/admin/templates/tpl-doesnotexist", root.token, nil), 404)
		e.want(e.do("DELETE", "/v1/admin/templates/"+tpl.ID, root.token, nil), 204)
		if _, err := st.GetTemplate(ctx, owner.team, tpl.ID); err == nil {
			t.Fatal("template still there")
		}
		e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{"template_name": "Bad Name"}), 400)
		e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{"template_name": "ok", "spec": []int{1}}), 400)
		// spec is a pointer in the generated CreateBuild, so its absence is still named.
		if m := e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{"template_name": "ok"}), 400).str(t, "message"); !strings.HasPrefix(m, "spec is required") {
			t.Fatalf("missing spec: message %q", m)
		}
		e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{"template_name": "ok", "team_id": "team-nope", "spec": map[string]any{"run": []string{"true"}}}), 404)
		b := e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{
			"template_name": "python", "spec": map[string]any{"from": "base", "run": []string{"apt-get install -y python3-pip"}},
		}), 201).json(t)
		if b["status"] != "pending" || b["team_id"] != store.PlatformTeamID {
			t.Fatalf("build = %v", b)
		}
		bid := b["id"].(string)
		if bs := e.want(e.do("GET", "/v1/admin/builds", root.token, nil), 200).json(t)["builds"].([]any); len(bs) != 1 {
			t.Fatalf("builds = %v", bs)
		}
		if c := e.want(e.do("POST", "/v1/admin/builds/"+bid+"/cancel", root.token, nil), 200).json(t); c["status"] != "cancelled" {
			t.Fatalf("cancel = %v", c)
		}
		e.want(e.do("POST", "/v1/admin/builds/"+bid+"/cancel", root.token, nil), 409)
		e.want(e.do("POST", "/v1/admin/builds/bld-nope/cancel", root.token, nil), 404)
		if got := auditActions(t, st, bid); fmt.Sprint(got) != "[cancel:failure cancel:success create:success]" {
			t.Fatalf("build audit = %v", got)
		}

		// Delete the owner's team: capsules (one on a dead host), keys and
		// members go; the admin log keeps the trace.
		e.want(e.do("DELETE", "/v1/admin/teams/"+owner.team, root.token, nil), 204)
		if _, err := st.GetTeam(ctx, owner.team); err == nil {
			t.Fatal("team still exists")
		}
		for _, id := range []string{onHost.ID, unplaced.ID} {
			if _, err := st.GetCapsuleUnscoped(ctx, id); err == nil {
				t.Fatalf("capsule %s survived its team", id)
			}
		}
		e.want(e.do("GET", "/v1/me", key, nil), 401)
		if ms, err := st.ListTeamsForUser(ctx, owner.id); err != nil || len(ms) != 0 {
			t.Fatalf("memberships = %v, %v", ms, err)
		}
		es, _, err := st.ListAuditLogs(ctx, store.AuditFilter{TeamID: store.PlatformTeamID, Scope: store.ScopeAdmin, ResourceType: "team", Action: "delete"})
		if err != nil || len(es) != 1 || es[0].ResourceID != owner.team || es[0].ActorID != root.id {
			t.Fatalf("team delete audit = %+v, %v", es, err)
		}
		e.want(e.do("DELETE", "/v1/admin/teams/"+owner.team, root.token, nil), 404)
	})
}

// TestLastAdminConcurrentRevokes fires many concurrent revokes at the last
// two admins through the API: one admin always remains, and no request
// fails with a 5xx.
func TestLastAdminConcurrentRevokes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		e := newEnv(t, st)
		a := e.signup("a@example.com")
		b := e.signup("b@example.com")
		admins := []user{a, b}
		rounds, perRound := 8, 24
		if testing.Short() {
			rounds, perRound = 3, 10
		}
		for round := range rounds {
			for _, u := range admins {
				e.makeAdmin(u)
			}
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				statuses = map[int]int{}
			)
			start := make(chan struct{})
			for i := range perRound {
				by, target := admins[i%2], admins[(i/2)%2]
				wg.Go(func() {
					<-start
					r := e.do("PUT", "/v1/admin/users/"+target.id+"/admin", by.token, map[string]bool{"admin": false})
					mu.Lock()
					statuses[r.status]++
					mu.Unlock()
					if r.status >= 500 {
						t.Errorf("round %d: %d %s", round, r.status, r.body)
					}
				})
			}
			// A watcher checks that an admin remains throughout the storm.
			done := make(chan struct{})
			var watch sync.WaitGroup
			watch.Go(func() {
				for {
					if n, err := st.CountActiveAdmins(ctx); err != nil || n < 1 {
						t.Errorf("round %d: active admins = %d, %v during the revokes", round, n, err)
					}
					select {
					case <-done:
						return
					default:
					}
				}
			})
			close(start)
			wg.Wait()
			close(done)
			watch.Wait()
			for s := range statuses {
				if s != http.StatusOK && s != http.StatusConflict && s != http.StatusForbidden {
					t.Fatalf("round %d: unexpected status %d (%v)", round, s, statuses)
				}
			}
			n, err := st.CountActiveAdmins(ctx)
			if err != nil || n != 1 {
				t.Fatalf("round %d: active admins = %d, %v (statuses %v)", round, n, err, statuses)
			}
			if statuses[http.StatusConflict] == 0 {
				t.Fatalf("round %d: no revoke was refused: %v", round, statuses)
			}
			// The survivor still has admin access.
			var alive int
			for _, u := range admins {
				if e.do("GET", "/v1/admin/users", u.token, nil).status == http.StatusOK {
					alive++
				}
			}
			if alive != 1 {
				t.Fatalf("round %d: %d admins can use the panel", round, alive)
			}
		}
	})
}

// TestAuditPaginationUnderInserts pages through the admin and team audit
// logs while entries are being inserted: every entry that existed when
// paging began is seen exactly once, in (created_at, id) descending order.
func TestAuditPaginationUnderInserts(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		e := newEnv(t, st)
		root := e.signup("root@example.com")
		e.makeAdmin(root)
		n := 300
		if testing.Short() {
			n = 80
		}
		base := time.Now().UTC().Add(-time.Hour)
		var fresh atomic.Int64
		fresh.Store(100000)
		insert := func(teamID string, scope store.AuditScope, at time.Time, i int) {
			if _, err := st.InsertAuditLog(ctx, store.AuditLog{
				TeamID: teamID, ActorType: store.ActorSystem, ResourceType: "capsule", ResourceID: fmt.Sprintf("cl-%06d", i),
				Action: "create", Status: store.AuditSuccess, Scope: scope, CreatedAt: at,
			}); err != nil {
				t.Error(err)
			}
		}
		// Several entries share a timestamp so the id breaks ties.
		for i := range n {
			insert(root.team, store.ScopeTeam, base.Add(time.Duration(i/3)*time.Millisecond), i)
		}
		for _, tc := range []struct{ name, path string }{
			{"team", "/v1/audit-logs?resource_type=capsule&limit=7"},
			{"admin", "/v1/admin/audit-logs?team_id=" + root.team + "&resource_type=capsule&scope=team&limit=7"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// Everything inserted so far (by an earlier subtest's
				// inserter too) is older than the first page: it bounds
				// how many pages a correct listing takes.
				maxPages := (n+int(fresh.Load()-100000))/7 + 10
				stop := make(chan struct{})
				var wg sync.WaitGroup
				stopInserts := sync.OnceFunc(func() { close(stop); wg.Wait() })
				defer stopInserts() // also when the test fails early
				// The inserter is paced and bounded: unpaced, on a loaded
				// machine it outran the pager and grew SQLite's WAL (held
				// open by the readers) to tens of GB.
				wg.Go(func() {
					tick := time.NewTicker(time.Millisecond)
					defer tick.Stop()
					for range 5000 {
						select {
						case <-stop:
							return
						case <-tick.C:
						}
						insert(root.team, store.ScopeTeam, time.Now().UTC(), int(fresh.Add(1)))
					}
				})
				seen := map[string]int{}
				var prev struct {
					at time.Time
					id float64
				}
				cursor := ""
				for pages := 0; ; pages++ {
					if pages > maxPages+int(fresh.Load()-100000)/7 {
						t.Fatal("pagination does not end")
					}
					path := tc.path
					if cursor != "" {
						path += "&cursor=" + cursor
					}
					page := e.want(e.do("GET", path, root.token, nil), 200).json(t)
					for _, en := range page["entries"].([]any) {
						m := en.(map[string]any)
						at, err := time.Parse(time.RFC3339Nano, m["created_at"].(string))
						if err != nil {
							t.Fatal(err)
						}
						id := m["id"].(float64)
						if !prev.at.IsZero() && (at.After(prev.at) || (at.Equal(prev.at) && id >= prev.id)) {
							t.Fatalf("order broken: %v/%v after %v/%v", at, id, prev.at, prev.id)
						}
						prev.at, prev.id = at, id
						seen[m["resource_id"].(string)]++
					}
					next, _ := page["next_cursor"].(string)
					if next == "" {
						break
					}
					cursor = next
				}
				stopInserts()
				for i := range n {
					if c := seen[fmt.Sprintf("cl-%06d", i)]; c != 1 {
						t.Fatalf("entry %d seen %d times", i, c)
					}
				}
				for id, c := range seen {
					if c != 1 {
						t.Fatalf("%s seen %d times", id, c)
					}
				}
			})
		}
		e.want(e.do("GET", "/v1/admin/audit-logs?cursor=!!notacursor", root.token, nil), 400)
		e.want(e.do("GET", "/v1/admin/audit-logs?team_id=bogus", root.token, nil), 404)
	})
}

// TestAdminBuildSpecValidation: a build's spec is checked when the build is
// queued; every bad spec is a 400 with a message naming the problem, and a
// good one is stored with its defaults filled in.
func TestAdminBuildSpecValidation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		root := e.signup("root@example.com")
		e.makeAdmin(root)
		other := e.signup("other@example.com")
		ctx := context.Background()
		hidden, err := st.CreateTemplate(ctx, store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: other.team, Name: "hidden"})
		if err != nil {
			t.Fatal(err)
		}
		tooMany := make([]string, 101)
		for i := range tooMany {
			tooMany[i] = "true"
		}
		for _, tc := range []struct {
			name string
			body any
			want int
			msg  string
		}{
			{"bad JSON", `{"template_name":"t1","spec":{"run":["true"]`, 400, "not valid JSON"},
			{"spec not an object", `{"template_name":"t1","spec":"echo hi"}`, 400, "spec"},
			{"no spec", map[string]any{"template_name": "t1"}, 400, "spec is required"},
			{"unknown field", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true"}, "base": "base"}}, 400, "unknown field"},
			{"wrong type", map[string]any{"template_name": "t1", "spec": map[string]any{"run": "true"}}, 400, "spec.run"},
			{"empty run", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{}}}, 400, "spec.run must hold"},
			{"blank step", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true", "  "}}}, 400, "spec.run[1] is empty"},
			{"too many steps", map[string]any{"template_name": "t1", "spec": map[string]any{"run": tooMany}}, 400, "spec.run must hold 1 to 100"},
			{"step too long", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{strings.Repeat("x", 16*1024+1)}}}, 400, "longer than"},
			{"bad from", map[string]any{"template_name": "t1", "spec": map[string]any{"from": "No Such!", "run": []string{"true"}}}, 400, "spec.from"},
			{"unknown from", map[string]any{"template_name": "t1", "spec": map[string]any{"from": "nosuch", "run": []string{"true"}}}, 400, "not found"},
			{"another team's from", map[string]any{"template_name": "t1", "spec": map[string]any{"from": hidden.ID, "run": []string{"true"}}}, 400, "not found"},
			{"relative workdir", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true"}, "workdir": "tmp"}}, 400, "spec.workdir"},
			{"bad env key", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true"}, "env": map[string]string{"1X": "y"}}}, 400, "spec.env"},
			{"memory too small", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true"}, "memory_mb": 1}}, 400, "spec.memory_mb"},
			{"timeout too long", map[string]any{"template_name": "t1", "spec": map[string]any{"run": []string{"true"}, "timeout_sec": 7201}}, 400, "spec.timeout_sec"},
			{"existing template name", map[string]any{"template_name": "minimal", "spec": map[string]any{"run": []string{"true"}}}, 409, "already has a template"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.want(e.do("POST", "/v1/admin/builds", root.token, tc.body), tc.want)
				m := r.json(t)
				if m["code"] == "" || !strings.Contains(fmt.Sprint(m["message"]), tc.msg) {
					t.Fatalf("error = %v, want a message containing %q", m, tc.msg)
				}
			})
		}

		// A good spec: defaults filled in, the from template of the build's
		// team (team templates by id work), pending, and a second build of
		// the same name while it is pending is a conflict.
		b := e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{
			"template_name": "tools", "team_id": other.team,
			"spec": map[string]any{"from": hidden.ID, "run": []string{"echo hi > /hi"}, "allow_internet": false},
		}), 201).json(t)
		spec := b["spec"].(map[string]any)
		for k, want := range map[string]any{
			"from": hidden.ID, "workdir": "/", "vcpus": 1.0, "memory_mb": 512.0, "disk_size_mb": 5120.0,
			"timeout_sec": 1800.0, "allow_internet": false,
		} {
			if got := spec[k]; got != want {
				t.Errorf("spec.%s = %v, want %v", k, got, want)
			}
		}
		if b["status"] != "pending" || b["team_id"] != other.team {
			t.Fatalf("build = %v", b)
		}
		e.want(e.do("POST", "/v1/admin/builds", root.token, map[string]any{
			"template_name": "tools", "team_id": other.team, "spec": map[string]any{"run": []string{"true"}},
		}), 409)
	})
}
