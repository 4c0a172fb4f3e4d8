package capsules

import (
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// TestCannotMoveWithVolumes: a hibernated capsule that could move (its
// export record is stored) stays on its host while it has volumes mounted
// (they are attached there; moving them is not built), and says so.
func TestCannotMoveWithVolumes(t *testing.T) {
	st := teststore.Open(t, teststore.SQLite)
	ctx := testutil.Context(t, testutil.Short)
	team, err := st.CreateTeam(ctx, store.Team{Name: "mv"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken("t"), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h, err := st.RegisterHost(ctx, auth.HashToken("t"), store.Host{ID: store.NewID(store.PrefixHost), Address: "127.0.0.1:9", VCPUs: 8, MemoryMB: 16384})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Store: st})
	mk := func() store.Capsule {
		c, err := st.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: "minimal", HostID: h.ID, Status: store.CapsuleHibernated, VCPUs: 1, MemoryMB: 128, DiskSizeMB: 512})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SetCapsuleMoveRecord(ctx, team.ID, c.ID, `{"v":1}`); err != nil {
			t.Fatal(err)
		}
		c, err = st.GetCapsule(ctx, team.ID, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	plain, withVol := mk(), mk()
	v, err := st.CreateVolume(ctx, store.Volume{TeamID: team.ID, Name: "data", SizeMB: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddVolumeMounts(ctx, team.ID, withVol.ID, []store.VolumeMount{{VolumeID: v.ID, Path: "/data"}}); err != nil {
		t.Fatal(err)
	}
	if why, _, err := s.cannotMove(ctx, plain); err != nil || why != "" {
		t.Fatalf("a capsule without volumes: cannotMove = %q, %v; want it movable", why, err)
	}
	if why, _, err := s.cannotMove(ctx, withVol); err != nil || !strings.Contains(why, "volumes") {
		t.Fatalf("a capsule with a volume: cannotMove = %q, %v; want the volumes named", why, err)
	}
}
