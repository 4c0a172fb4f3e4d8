package scheduler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// The fleet simulation (issue 24, item 4): the real Scheduler against an
// in-memory host list standing in for the store, with heartbeats that lag
// placements, BYOC teams, template pinning and churn. It reports placement
// time and balance; TestFleetSimulation runs a reduced fleet in make test,
// BenchmarkFleetSimulation the full one (1,000 hosts, 100,000 capsules).

// simFleet is the in-memory store: hosts as their last heartbeat reported
// them, and the truth (what each host really holds).
type simFleet struct {
	hosts []store.Host
	truth map[string]*simLoad
	// placed: capsule id → host id and request, for churn and checks.
	placed map[string]simPlacement
}

type simLoad struct{ vcpus, memMB, diskMB int64 }

type simPlacement struct {
	host string
	req  Request
	team string
}

func (f *simFleet) ListSchedulableHosts(_ context.Context, teamID string, byoc bool) ([]store.Host, error) {
	out := make([]store.Host, 0, len(f.hosts))
	for _, h := range f.hosts {
		if h.Status != store.HostOnline {
			continue
		}
		if byoc && h.TeamID == teamID || !byoc && h.TeamID == "" {
			out = append(out, h)
		}
	}
	return out, nil
}

// heartbeat makes every host report its true load at time now.
func (f *simFleet) heartbeat(now time.Time) {
	for i := range f.hosts {
		h := &f.hosts[i]
		l := f.truth[h.ID]
		h.UsedVCPUs, h.UsedMemoryMB, h.UsedDiskMB = l.vcpus, l.memMB, l.diskMB
		t := now
		h.LastHeartbeatAt = &t
	}
}

type simConfig struct {
	hosts, capsules int
	// byocTeams own byocHosts hosts each.
	byocTeams, byocHosts int
	// heartbeatEvery placements, every host reports.
	heartbeatEvery int
}

type simResult struct {
	p50, p99, max time.Duration
	placed        int
	refused       int
	// balance is max/mean memory use (as a fraction of capacity) over
	// the shared hosts at the end.
	balance float64
}

func runFleetSim(t testing.TB, c simConfig) simResult {
	rng := rand.New(rand.NewPCG(24, 1))
	f := &simFleet{truth: map[string]*simLoad{}, placed: map[string]simPlacement{}}
	// Host shapes: a mixed fleet (small and large machines).
	shapes := []struct{ vcpus, memMB int64 }{{16, 64 << 10}, {32, 128 << 10}, {64, 256 << 10}, {96, 384 << 10}}
	var byocOwners []string
	for i := range c.byocTeams {
		byocOwners = append(byocOwners, fmt.Sprintf("team-byoc-%02d", i))
	}
	for i := range c.hosts {
		s := shapes[i%len(shapes)]
		h := store.Host{
			ID: fmt.Sprintf("host-%04d", i), Status: store.HostOnline,
			VCPUs: s.vcpus, MemoryMB: s.memMB, DiskMB: 2 << 20,
		}
		if i < c.byocTeams*c.byocHosts {
			h.TeamID = byocOwners[i/c.byocHosts]
		}
		f.hosts = append(f.hosts, h)
		f.truth[h.ID] = &simLoad{}
	}
	now := time.Unix(1_800_000_000, 0)
	f.heartbeat(now)
	s := New(f)
	s.Now = func() time.Time { return now }
	sharedHosts, _ := f.ListSchedulableHosts(context.Background(), "", false)

	sizes := []Request{{VCPUs: 1, MemoryMB: 512, DiskMB: 5120}, {VCPUs: 2, MemoryMB: 2048, DiskMB: 10240}, {VCPUs: 4, MemoryMB: 8192, DiskMB: 20480}}
	lat := make([]time.Duration, 0, c.capsules)
	var refused int
	var live []string
	for i := range c.capsules {
		now = now.Add(time.Millisecond)
		req := sizes[rng.IntN(len(sizes))]
		req.CapsuleID = fmt.Sprintf("cl-%06d", i)
		team := store.Team{ID: fmt.Sprintf("team-%03d", rng.IntN(200))}
		if c.byocTeams > 0 && rng.IntN(10) == 0 {
			team = store.Team{ID: byocOwners[rng.IntN(len(byocOwners))], IsBYOC: true}
		}
		// 5 %: a template built on one host pins the capsule there.
		if rng.IntN(20) == 0 {
			allowed, _ := f.ListSchedulableHosts(context.Background(), team.ID, team.IsBYOC)
			req.HostID = allowed[rng.IntN(len(allowed))].ID
		}
		start := time.Now()
		h, err := s.Pick(context.Background(), team, req)
		lat = append(lat, time.Since(start))
		if err != nil {
			refused++
			continue
		}
		// Invariants: BYOC and pinning.
		if team.IsBYOC && h.TeamID != team.ID || !team.IsBYOC && h.TeamID != "" {
			t.Fatalf("%s of team %s (byoc %v) placed on %s of team %q", req.CapsuleID, team.ID, team.IsBYOC, h.ID, h.TeamID)
		}
		if req.HostID != "" && h.ID != req.HostID {
			t.Fatalf("%s pinned to %s placed on %s", req.CapsuleID, req.HostID, h.ID)
		}
		l := f.truth[h.ID]
		l.vcpus += req.VCPUs
		l.memMB += req.MemoryMB
		l.diskMB += req.DiskMB
		f.placed[req.CapsuleID] = simPlacement{host: h.ID, req: req, team: team.ID}
		live = append(live, req.CapsuleID)
		// Churn: one capsule in ten of those alive is destroyed.
		if rng.IntN(10) == 0 && len(live) > 0 {
			j := rng.IntN(len(live))
			id := live[j]
			live[j] = live[len(live)-1]
			live = live[:len(live)-1]
			p := f.placed[id]
			pl := f.truth[p.host]
			pl.vcpus -= p.req.VCPUs
			pl.memMB -= p.req.MemoryMB
			pl.diskMB -= p.req.DiskMB
			s.Release(p.host, id)
			delete(f.placed, id)
		}
		if (i+1)%c.heartbeatEvery == 0 {
			now = now.Add(time.Millisecond)
			f.heartbeat(now)
		}
	}
	// No host holds more than its capacity under its ratios.
	for _, h := range f.hosts {
		l := f.truth[h.ID]
		o := Ratios(h)
		if float64(l.vcpus) > float64(h.VCPUs)*o.CPU || float64(l.memMB) > float64(h.MemoryMB)*o.Memory {
			t.Fatalf("%s overfilled: %+v of %d vCPUs, %d MB", h.ID, *l, h.VCPUs, h.MemoryMB)
		}
	}
	var sum, hi float64
	for _, h := range sharedHosts {
		u := float64(f.truth[h.ID].memMB) / (float64(h.MemoryMB) * Ratios(h).Memory)
		sum += u
		hi = max(hi, u)
	}
	slices.Sort(lat)
	r := simResult{
		p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1],
		placed: c.capsules - refused, refused: refused,
	}
	if mean := sum / float64(len(sharedHosts)); mean > 0 {
		r.balance = hi / mean
	}
	return r
}

func (r simResult) String() string {
	return fmt.Sprintf("placed %d (refused %d), Pick p50 %v p99 %v max %v, balance (max/mean memory use of shared hosts) %.3f",
		r.placed, r.refused, r.p50, r.p99, r.max, r.balance)
}

// TestFleetSimulation: the reduced fleet (100 hosts, 10,000 capsules):
// BYOC and pinning hold, no host is overfilled, load stays balanced.
func TestFleetSimulation(t *testing.T) {
	r := runFleetSim(t, simConfig{hosts: 100, capsules: 10_000, byocTeams: 5, byocHosts: 2, heartbeatEvery: 200})
	t.Log(r)
	if r.refused != 0 {
		t.Errorf("%d creates refused in a fleet with room", r.refused)
	}
	if r.balance > 1.3 {
		t.Errorf("balance %.3f: the least-loaded rule should keep max/mean under 1.3", r.balance)
	}
}

// BenchmarkFleetSimulation is issue 24's scheduler figure: 1,000 hosts,
// 100,000 capsules (with churn, 5 % pinned, 10 % BYOC).
//
//	go test ./internal/scheduler -run '^$' -bench FleetSimulation -benchtime 1x
func BenchmarkFleetSimulation(b *testing.B) {
	for b.Loop() {
		r := runFleetSim(b, simConfig{hosts: 1000, capsules: 100_000, byocTeams: 20, byocHosts: 5, heartbeatEvery: 1000})
		b.Log(r)
		b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs/pick")
		b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs/pick")
		b.ReportMetric(r.balance, "max/mean")
	}
}
