package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestUsageAndAuditLogRoutes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		owner := e.signup("usage@example.com")
		ctx := context.Background()
		c := e.insertCapsule(owner.team, "")
		now := time.Now().UTC()
		if err := st.InsertMetricSnapshots(ctx, []store.MetricSnapshot{
			{CapsuleID: c.ID, TeamID: owner.team, TS: now.Add(-time.Minute), IntervalMS: 60000, CPUCores: 0.5, MemBytes: 256 << 20},
		}); err != nil {
			t.Fatal(err)
		}
		today := now.Format(time.DateOnly)
		rep := e.want(e.do("GET", "/v1/capsules/usage?from="+today+"&to="+today, owner.token, nil), 200).json(t)
		totals := rep["totals"].(map[string]any)
		if totals["cpu_minutes"] != 0.5 || totals["ram_mb_minutes"] != 256.0 {
			t.Fatalf("usage = %v", rep)
		}
		for _, q := range []string{"from=2026-01-01&to=2026-06-01", "from=x&to=y", "from=2026-02-02&to=2026-02-01", ""} {
			r := e.want(e.do("GET", "/v1/capsules/usage?"+q, owner.token, nil), 400)
			if r.str(t, "code") != "invalid_argument" {
				t.Fatalf("%q: %s", q, r.body)
			}
		}

		e.apiKey(owner, "k1")
		e.apiKey(owner, "k2")
		page := e.want(e.do("GET", "/v1/audit-logs?resource_type=api_key&limit=1", owner.token, nil), 200).json(t)
		entries := page["entries"].([]any)
		next, _ := page["next_cursor"].(string)
		if len(entries) != 1 || next == "" {
			t.Fatalf("first page = %v", page)
		}
		page2 := e.want(e.do("GET", "/v1/audit-logs?resource_type=api_key&limit=1&cursor="+next, owner.token, nil), 200).json(t)
		if e2 := page2["entries"].([]any); len(e2) != 1 || e2[0].(map[string]any)["id"] == entries[0].(map[string]any)["id"] {
			t.Fatalf("second page = %v", page2)
		}
		if meta := entries[0].(map[string]any)["metadata"].(map[string]any); !strings.HasPrefix(meta["prefix"].(string), "wrn_") {
			t.Fatalf("metadata = %v", meta)
		}
		e.want(e.do("GET", "/v1/audit-logs?limit=0", owner.token, nil), 400)
		e.want(e.do("GET", "/v1/audit-logs?from=yesterday", owner.token, nil), 400)
		// Another team sees none of it; a plain member may not read it.
		other := e.signup("other@example.com")
		if got := e.want(e.do("GET", "/v1/audit-logs", other.token, nil), 200).json(t)["entries"].([]any); len(got) != 0 {
			t.Fatalf("other team sees %v", got)
		}
		member := e.signup("member@example.com")
		if _, err := st.AddTeamMember(ctx, owner.team, member.id, store.RoleMember); err != nil {
			t.Fatal(err)
		}
		sw := e.want(e.do("POST", "/v1/teams/"+owner.team+"/switch", member.token, nil), 200).str(t, "token")
		e.want(e.do("GET", "/v1/audit-logs", sw, nil), 403)
	})
}
