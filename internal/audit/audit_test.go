package audit

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

func TestRecorder(t *testing.T) {
	for _, eng := range teststore.Engines {
		t.Run(eng, func(t *testing.T) {
			st := teststore.Open(t, eng)
			ctx := testutil.Context(t, testutil.Long)
			team, err := st.CreateTeam(ctx, store.Team{ID: store.NewID(store.PrefixTeam), Name: "acme"})
			if err != nil {
				t.Fatal(err)
			}
			rec := &Recorder{Store: st}
			actor := Actor{Type: store.ActorUser, ID: "usr-1", Name: "Ada"}
			cancelled, cancel := context.WithCancel(ctx)
			cancel() // a cancelled request still gets its action recorded
			rec.Log(cancelled, Entry{TeamID: team.ID, Actor: actor, ResourceType: "capsule", ResourceID: "cl-1", Action: "create", Metadata: map[string]any{"template": "base"}})
			rec.Admin(ctx, Entry{Actor: actor, ResourceType: "user", ResourceID: "usr-2", Action: "revoke_admin", Failed: true})

			teamLogs, _, err := st.ListAuditLogs(ctx, store.AuditFilter{TeamID: team.ID})
			if err != nil {
				t.Fatal(err)
			}
			if len(teamLogs) != 1 {
				t.Fatalf("team has %d entries, want 1", len(teamLogs))
			}
			e := teamLogs[0]
			var meta map[string]string
			_ = json.Unmarshal(e.Metadata, &meta)
			if e.Scope != store.ScopeTeam || e.Status != store.AuditSuccess || e.ActorName != "Ada" || e.Action != "create" || meta["template"] != "base" {
				t.Fatalf("team entry = %+v (meta %s)", e, e.Metadata)
			}
			adminLogs, _, err := st.ListAuditLogs(ctx, store.AuditFilter{TeamID: store.PlatformTeamID, Scope: store.ScopeAdmin})
			if err != nil {
				t.Fatal(err)
			}
			if len(adminLogs) != 1 || adminLogs[0].Status != store.AuditFailure || adminLogs[0].Action != "revoke_admin" {
				t.Fatalf("admin entries = %+v", adminLogs)
			}
		})
	}
}
