package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

func host(id string, cpus, mem, usedCPU, usedMem int64) store.Host {
	// The ratios the scheduler had before they became configurable.
	return store.Host{
		ID: id, Status: store.HostOnline, VCPUs: cpus, MemoryMB: mem, UsedVCPUs: usedCPU, UsedMemoryMB: usedMem, DiskMB: 100000,
		CPUOvercommit: 4, MemoryOvercommit: 1, DiskOvercommit: 1,
	}
}

func ratios(h store.Host, cpu, mem, disk float64) store.Host {
	h.CPUOvercommit, h.MemoryOvercommit, h.DiskOvercommit = cpu, mem, disk
	return h
}

func disk(h store.Host, free, used int64) store.Host {
	h.DiskMB, h.UsedDiskMB = free, used
	return h
}

// TestSparseDiskBiggerThanFreeDisk: a host reporting 76 GB free refuses a
// capsule asking for a 200 GB disk, however high its disk overcommit (a
// capsule may fill its disk), and admits many 5 GB ones.
func TestSparseDiskBiggerThanFreeDisk(t *testing.T) {
	h := disk(ratios(host("a", 2, 24576, 0, 0), 0, 0, 0), 76*1024, 0)
	if _, err := Choose([]store.Host{ratios(h, 0, 0, 100)}, Request{VCPUs: 1, MemoryMB: 512, DiskMB: 200 * 1024}); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("200 GB disk on 76 GB free: err = %v, want ErrNoCapacity", err)
	}
	h.UsedDiskMB = 200 * 5120 // 200 capsules of 5 GB already placed: 1 TB of 1.2 TB (default ratio 16)
	if _, err := Choose([]store.Host{h}, Request{VCPUs: 1, MemoryMB: 512, DiskMB: 5120}); err != nil {
		t.Fatalf("5 GB disk under the default disk overcommit: %v", err)
	}
	if f := FreeOn(h); f.DiskMB != 76*1024 || f.VCPUs != 256 || f.MemoryMB != 24576*8 {
		t.Fatalf("FreeOn = %+v", f)
	}
}

func TestOvercommitValidate(t *testing.T) {
	for _, o := range []Overcommit{{}, {CPU: 1, Memory: 1000, Disk: 2.5}} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []Overcommit{{CPU: 0.5}, {Memory: 1001}, {Disk: -1}} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestChoose(t *testing.T) {
	req := Request{VCPUs: 1, MemoryMB: 512, DiskMB: 5120}
	unavailable := host("h-down", 64, 1<<20, 0, 0)
	unavailable.Status = store.HostUnavailable
	tests := []struct {
		name    string
		hosts   []store.Host
		want    string
		wantErr error
	}{
		{"none", nil, "", ErrNoHosts},
		{"only unavailable", []store.Host{unavailable}, "", ErrNoHosts},
		{"most free memory wins", []store.Host{host("a", 4, 8192, 0, 6000), host("b", 4, 8192, 0, 1000)}, "b", nil},
		{"cpu breaks equal memory", []store.Host{host("a", 4, 8192, 10, 0), host("b", 4, 8192, 2, 0)}, "b", nil},
		{"skips full host", []store.Host{host("a", 4, 8192, 0, 8000), host("b", 1, 1024, 0, 0)}, "b", nil},
		{"no capacity", []store.Host{host("a", 4, 1024, 0, 1000)}, "", ErrNoCapacity},
		{"cpu overcommit bound", []store.Host{ratios(host("a", 1, 8192, 4, 0), 4, 1, 1)}, "", ErrNoCapacity},
		{"default cpu overcommit admits idle capsules", []store.Host{ratios(host("a", 2, 1<<20, 255, 0), 0, 0, 0)}, "a", nil},
		{"default cpu overcommit bound", []store.Host{ratios(host("a", 2, 1<<20, 256, 0), 0, 0, 0)}, "", ErrNoCapacity},
		{"memory overcommit admits", []store.Host{ratios(host("a", 4, 1024, 0, 3000), 4, 4, 1)}, "a", nil},
		{"memory overcommit bound", []store.Host{ratios(host("a", 4, 1024, 0, 3800), 4, 4, 1)}, "", ErrNoCapacity},
		{"tightest ratio decides", []store.Host{ratios(host("a", 1, 1<<20, 1, 0), 1, 100, 100)}, "", ErrNoCapacity},
		{"disk overcommit bound", []store.Host{disk(ratios(host("a", 4, 8192, 0, 0), 4, 1, 2), 8000, 11000)}, "", ErrNoCapacity},
		{"disk overcommit admits", []store.Host{disk(ratios(host("a", 4, 8192, 0, 0), 4, 1, 2), 8000, 10000)}, "a", nil},
		{"unavailable never chosen", []store.Host{unavailable, host("a", 2, 2048, 0, 0)}, "a", nil},
		{"deterministic tie", []store.Host{host("b", 4, 4096, 0, 0), host("a", 4, 4096, 0, 0)}, "a", nil},
	}
	pinned := []struct {
		name    string
		hosts   []store.Host
		pin     string
		want    string
		wantErr error
	}{
		{"pinned to the busier host", []store.Host{host("a", 4, 8192, 0, 6000), host("b", 4, 8192, 0, 1000)}, "a", "a", nil},
		{"pinned host full", []store.Host{host("a", 4, 1024, 0, 1000), host("b", 4, 8192, 0, 0)}, "a", "", ErrNoCapacity},
		{"pinned host unavailable", []store.Host{unavailable, host("b", 4, 8192, 0, 0)}, "h-down", "", ErrNoHosts},
		{"pinned host unknown", []store.Host{host("b", 4, 8192, 0, 0)}, "gone", "", ErrNoHosts},
	}
	for _, tt := range pinned {
		t.Run(tt.name, func(t *testing.T) {
			r := req
			r.HostID = tt.pin
			got, err := Choose(tt.hosts, r)
			if !errors.Is(err, tt.wantErr) || got.ID != tt.want {
				t.Errorf("Choose = %q, %v; want %q, %v", got.ID, err, tt.want, tt.wantErr)
			}
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Choose(tt.hosts, req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got.ID != tt.want {
				t.Fatalf("host = %q, want %q", got.ID, tt.want)
			}
		})
	}
}

// TestPickRespectsBYOC places through a real store: a BYOC team gets
// only its own hosts, other teams only the shared ones.
func TestPickRespectsBYOC(t *testing.T) {
	for _, engine := range teststore.Engines {
		t.Run(engine, func(t *testing.T) {
			st := teststore.Open(t, engine)
			ctx := context.Background()
			byoc, err := st.CreateTeam(ctx, store.Team{Name: "byoc", IsBYOC: true})
			if err != nil {
				t.Fatal(err)
			}
			plain, err := st.CreateTeam(ctx, store.Team{Name: "plain"})
			if err != nil {
				t.Fatal(err)
			}
			lonely, err := st.CreateTeam(ctx, store.Team{Name: "lonely", IsBYOC: true})
			if err != nil {
				t.Fatal(err)
			}
			register := func(teamID, name string, mem, used int64) store.Host {
				tok := auth.RandomToken("wrt_")
				if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken(tok), TeamID: teamID, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
					t.Fatal(err)
				}
				h, err := st.RegisterHost(ctx, auth.HashToken(tok), store.Host{Address: name + ":50051", CredentialHash: auth.HashToken(name), VCPUs: 8, MemoryMB: mem, DiskMB: 100000})
				if err != nil {
					t.Fatal(err)
				}
				if h, err = st.HostHeartbeat(ctx, h.ID, store.HostUsage{Address: h.Address, VCPUs: 8, MemoryMB: mem, DiskMB: 100000, UsedMemoryMB: used}); err != nil {
					t.Fatal(err)
				}
				return h
			}
			busy := register("", "busy", 65536, 60000)
			idle := register("", "idle", 65536, 1000)
			own := register(byoc.ID, "own", 2048, 0)
			s := New(st)
			req := Request{VCPUs: 1, MemoryMB: 512, DiskMB: 5120}
			if got, err := s.Pick(ctx, byoc, req); err != nil || got.ID != own.ID {
				t.Fatalf("BYOC pick = %q, %v; want its own host %q", got.ID, err, own.ID)
			}
			if got, err := s.Pick(ctx, plain, req); err != nil || got.ID != idle.ID {
				t.Fatalf("shared pick = %q, %v; want the least loaded %q (not %q)", got.ID, err, idle.ID, busy.ID)
			}
			if _, err := s.Pick(ctx, lonely, req); !errors.Is(err, ErrNoHosts) {
				t.Fatalf("BYOC team without hosts: err = %v, want ErrNoHosts", err)
			}
			if err := st.SetHostStatus(ctx, idle.ID, store.HostUnavailable); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Pick(ctx, plain, req); err != nil || got.ID != busy.ID {
				t.Fatalf("pick with the idle host down = %q, %v; want %q", got.ID, err, busy.ID)
			}
		})
	}
}

// staticHosts is a HostLister over a fixed slice (the hosts' last
// heartbeat as the store would return it).
type staticHosts []store.Host

func (s staticHosts) ListSchedulableHosts(context.Context, string, bool) ([]store.Host, error) {
	return s, nil
}

// TestPickSpreadsABurstBetweenHeartbeats: with heartbeats that have not
// caught up, consecutive picks must not all land on the host that looked
// emptiest; a heartbeat newer than a placement replaces it; placements
// expire after ReservationTTL.
func TestPickSpreadsABurstBetweenHeartbeats(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	beat := now.Add(-time.Second)
	a := host("a", 4, 8192, 0, 0)
	b := host("b", 4, 8192, 0, 1024) // slightly busier
	a.LastHeartbeatAt, b.LastHeartbeatAt = &beat, &beat
	hosts := staticHosts{a, b}
	s := New(hosts)
	s.Now = func() time.Time { return now }
	team := store.Team{ID: "team-1"}
	req := Request{VCPUs: 1, MemoryMB: 1024, DiskMB: 1024}

	var got []string
	for range 6 {
		now = now.Add(time.Millisecond)
		h, err := s.Pick(context.Background(), team, req)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.ID)
	}
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	// a starts 1 GiB emptier, so it takes the first placement or two, then
	// the placements alternate: never all six on a.
	if count["a"] == 6 || count["b"] == 0 {
		t.Fatalf("burst placements %v: all on one host", got)
	}
	if count["a"]-count["b"] > 2 {
		t.Errorf("burst placements %v: want them spread (a %d, b %d)", got, count["a"], count["b"])
	}
	// The returned host carries the store's figures, not the reservations.
	if h, _ := s.Pick(context.Background(), team, req); h.UsedMemoryMB != 0 && h.UsedMemoryMB != 1024 {
		t.Errorf("Pick returned adjusted figures: used memory %d", h.UsedMemoryMB)
	}

	// A heartbeat newer than every placement: the host's own report counts.
	later := now.Add(time.Second)
	hosts[0].LastHeartbeatAt, hosts[1].LastHeartbeatAt = &later, &later
	now = later.Add(time.Millisecond)
	if h, err := s.Pick(context.Background(), team, req); err != nil || h.ID != "a" {
		t.Errorf("after fresh heartbeats: got %s, %v; want a (reservations dropped)", h.ID, err)
	}

	// Reservations expire without heartbeats.
	s2 := New(staticHosts{host("a", 1, 2048, 0, 0)})
	clock := now
	s2.Now = func() time.Time { return clock }
	s2.ReservationTTL = time.Minute
	big := Request{VCPUs: 1, MemoryMB: 2048}
	if _, err := s2.Pick(context.Background(), team, big); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Pick(context.Background(), team, big); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("second full-size pick before any heartbeat: %v, want ErrNoCapacity", err)
	}
	clock = clock.Add(2 * time.Minute)
	if _, err := s2.Pick(context.Background(), team, big); err != nil {
		t.Errorf("after the reservation expired: %v", err)
	}

	// Release: a create/destroy churn between heartbeats never fills the
	// host; releasing an unknown id changes nothing.
	s3 := New(staticHosts{host("a", 1, 2048, 0, 0)})
	s3.Now = func() time.Time { return clock }
	for i := range 10 {
		id := "cl-" + strconv.Itoa(i)
		h, err := s3.Pick(context.Background(), team, Request{CapsuleID: id, VCPUs: 1, MemoryMB: 2048})
		if err != nil {
			t.Fatalf("pick %d after releasing the previous ones: %v", i, err)
		}
		s3.Release("a", "cl-unknown")
		s3.Release(h.ID, id)
	}
	if _, err := s3.Pick(context.Background(), team, Request{CapsuleID: "held", VCPUs: 1, MemoryMB: 2048}); err != nil {
		t.Fatal(err)
	}
	s3.Release("a", "cl-unknown")
	if _, err := s3.Pick(context.Background(), team, Request{CapsuleID: "next", VCPUs: 1, MemoryMB: 2048}); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("a held placement was released by an unknown id: %v", err)
	}
}

// TestReplicasShareRecentPlacements: two control-plane replicas (two
// Schedulers) on one store fill two hosts between heartbeats. Each sees
// the other's placements through the store (capsule rows newer than the
// host's heartbeat), so together they never place more than the hosts
// hold: the ninth 1 GiB capsule on two 4 GiB hosts is refused.
func TestReplicasShareRecentPlacements(t *testing.T) {
	for _, engine := range teststore.Engines {
		t.Run(engine, func(t *testing.T) {
			st := teststore.Open(t, engine)
			ctx := context.Background()
			team, err := st.CreateTeam(ctx, store.Team{Name: "burst"})
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"h1", "h2"} {
				tok := auth.RandomToken("wrt_")
				if err := st.CreateHostToken(ctx, store.HostToken{TokenHash: auth.HashToken(tok), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
					t.Fatal(err)
				}
				h, err := st.RegisterHost(ctx, auth.HashToken(tok), store.Host{Address: name + ":50051", CredentialHash: auth.HashToken(name), VCPUs: 8, MemoryMB: 4096, DiskMB: 100000})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := st.HostHeartbeat(ctx, h.ID, store.HostUsage{
					Address: h.Address, VCPUs: 8, MemoryMB: 4096, DiskMB: 100000,
					CPUOvercommit: 1, MemoryOvercommit: 1, DiskOvercommit: 1,
				}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(2 * time.Millisecond) // capsules below are newer than the heartbeats
			replicas := []*Scheduler{New(st), New(st)}
			perHost := map[string]int{}
			place := func(i int) error {
				r := replicas[i%2]
				req := Request{CapsuleID: fmt.Sprintf("cl-burst-%d", i), VCPUs: 1, MemoryMB: 1024, DiskMB: 1024}
				h, err := r.Pick(ctx, team, req)
				if err != nil {
					return err
				}
				// What the capsules service does next: the capsule row.
				if _, err := st.CreateCapsule(ctx, store.Capsule{
					ID: req.CapsuleID, TeamID: team.ID, TemplateID: "tpl-base", HostID: h.ID, Status: store.CapsulePending,
					VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskSizeMB: req.DiskMB, TimeoutSec: 300, AccessTokenHash: "x",
				}); err != nil {
					t.Fatal(err)
				}
				perHost[h.ID]++
				return nil
			}
			// Replica 0 places four, then replica 1 four more: replica 1's own
			// memory says both hosts are empty; the store says they are half full.
			for i := 0; i < 8; i += 2 {
				if err := place(i); err != nil {
					t.Fatalf("capsule %d (replica 0): %v", i, err)
				}
			}
			for i := 1; i < 8; i += 2 {
				if err := place(i); err != nil {
					t.Fatalf("capsule %d (replica 1): %v", i, err)
				}
			}
			for id, n := range perHost {
				if n != 4 {
					t.Errorf("host %s holds %d capsules of 1 GiB, want 4 (placements %v)", id, n, perHost)
				}
			}
			if err := place(9); !errors.Is(err, ErrNoCapacity) {
				t.Fatalf("ninth capsule on two full hosts: err = %v, want ErrNoCapacity", err)
			}
		})
	}
}
