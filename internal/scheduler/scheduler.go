// Package scheduler places capsules on hosts. It owns the placement rule
// only: least loaded by free memory and free CPU among the online hosts a
// team may use (a BYOC team's own hosts, otherwise the shared ones).
//
// Invariants:
//   - A request pinned to a host (Request.HostID: its template was built
//     there) has that host as its only candidate.
//   - A host is a candidate only when the request fits under each of its
//     three overcommit ratios (CPU, memory, disk: the tightest decides).
//     Capacity is the host's figure times its ratio: vCPUs × CPU ratio,
//     memory × memory ratio, free disk × disk ratio, against the sum of
//     what its capsules were given. The ratios are the ones the host's
//     agent reports; a host that reports none gets Defaults. A single
//     capsule's disk must also fit in the host's free disk as it is (a
//     capsule may fill its disk; only the sum is a bet). A host reporting
//     no disk figure is not checked for disk.
//   - Among candidates the highest score wins, where score is the mean of
//     the free memory fraction and the free CPU fraction after placement;
//     ties break on host ID so placement is deterministic.
//   - A request naming an isolation (Request.Isolation) has as candidates
//     only the hosts whose capabilities say they run it (hostlink's
//     Capabilities.Supports: agents from before isolation selection run
//     containers only).
//   - Errors are ErrNoHosts (nothing online for the team), an
//     *IsolationError (hosts are online but none runs the isolation: the
//     fleet lacks it, which waiting will not fix) or ErrNoCapacity (hosts
//     exist but none fits); ErrNoHosts and ErrNoCapacity mean "try later"
//     to a caller.
//   - Host load comes from heartbeats, which lag. A Scheduler therefore
//     remembers what it placed on each host since that host's last
//     heartbeat and counts it as used, so a burst of creates between two
//     heartbeats spreads over the hosts instead of piling onto the one that
//     looked emptiest. A placement is forgotten once a heartbeat newer than
//     it arrives (the host then reports it itself), when its capsule is
//     released (Release: the create failed or the capsule was destroyed),
//     or after ReservationTTL. Placements made by other control-plane
//     replicas are seen through the store: ListSchedulableHosts returns,
//     per host, the capsules placed after its last heartbeat (Host.Placed)
//     and they count as used too; a placement of this replica that is
//     already among them is counted once.
package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// Errors.
var (
	ErrNoHosts    = errors.New("no host is available")
	ErrNoCapacity = errors.New("no host has enough free capacity")
	// ErrIsolationUnavailable: no online host runs the isolation asked
	// for (errors.Is matches an *IsolationError).
	ErrIsolationUnavailable = errors.New("no host runs the isolation")
)

// IsolationError says which isolation the team's online hosts lack, why
// (each distinct reason the hosts gave) and what they do run.
type IsolationError struct {
	Isolation string
	// Reasons are the hosts' distinct reasons, sorted.
	Reasons []string
	// Available are the isolations some online host runs, sorted.
	Available []string
}

func (e *IsolationError) Error() string {
	msg := fmt.Sprintf("isolation %q is not available on any host", e.Isolation)
	if len(e.Reasons) > 0 {
		msg += " (" + strings.Join(e.Reasons, "; ") + ")"
	}
	if len(e.Available) > 0 {
		msg += "; available: " + strings.Join(e.Available, ", ")
	}
	return msg
}

// Is makes errors.Is(err, ErrIsolationUnavailable) true.
func (e *IsolationError) Is(target error) bool { return target == ErrIsolationUnavailable }

// Capabilities decodes what h last reported (zero when nothing).
func Capabilities(h store.Host) hostlink.Capabilities {
	var c hostlink.Capabilities
	_ = json.Unmarshal([]byte(h.Capabilities), &c)
	return c
}

// Request is what a capsule needs. CapsuleID, when set, names the
// placement so Release can forget it (a failed create, a destroy before
// the host's next heartbeat).
type Request struct {
	CapsuleID string
	// HostID, when set, is the only host the capsule may go to (its
	// template exists only there).
	HostID   string
	VCPUs    int64
	MemoryMB int64
	DiskMB   int64
	// Isolation, when set, is the isolation the capsule needs (container,
	// gvisor, microvm): only hosts that run it are candidates.
	Isolation string
}

// HostLister is the part of the store the scheduler reads.
type HostLister interface {
	ListSchedulableHosts(ctx context.Context, teamID string, byoc bool) ([]store.Host, error)
}

// Overcommit is how much of a resource may be promised to capsules per
// unit the host has: 16 CPU means 16 one-vCPU capsules per host CPU.
type Overcommit struct {
	CPU    float64 `json:"cpu"`
	Memory float64 `json:"memory"`
	Disk   float64 `json:"disk"`
}

// DefaultOvercommit is what agents use when started without
// --cpu-overcommit, --memory-overcommit or --disk-overcommit, and what the
// scheduler assumes for a host that reports no ratios. Chosen from
// measurement (docs/OPERATIONS.md): an idle minimal capsule uses about
// 0.2 % of a core and a few MB of memory, so a 2-CPU, 24 GiB host holds
// 256 idle 1-vCPU, 512 MB capsules by CPU and 384 by memory; sparse disks
// use a few MB until written to.
var DefaultOvercommit = Overcommit{CPU: 128, Memory: 8, Disk: 16}

// Validate checks ratios a host or operator gives: each between 1 and
// 1000, or 0 (the default).
func (o Overcommit) Validate() error {
	for _, r := range []struct {
		name string
		v    float64
	}{{"cpu", o.CPU}, {"memory", o.Memory}, {"disk", o.Disk}} {
		if r.v != 0 && (r.v < 1 || r.v > 1000) || r.v != r.v {
			return fmt.Errorf("%s overcommit %v must be between 1 and 1000", r.name, r.v)
		}
	}
	return nil
}

// Ratios are the overcommit ratios the scheduler applies to h: the ones it
// reported, with DefaultOvercommit for any it did not.
func Ratios(h store.Host) Overcommit {
	o := Overcommit{CPU: h.CPUOvercommit, Memory: h.MemoryOvercommit, Disk: h.DiskOvercommit}
	if o.CPU <= 0 {
		o.CPU = DefaultOvercommit.CPU
	}
	if o.Memory <= 0 {
		o.Memory = DefaultOvercommit.Memory
	}
	if o.Disk <= 0 {
		o.Disk = DefaultOvercommit.Disk
	}
	return o
}

// Free is what may still be placed on h: capacity times ratio minus what
// its capsules were given (never below zero). DiskMB is additionally
// bounded by the free disk itself (see the package invariants).
type Free struct {
	VCPUs    int64 `json:"vcpus"`
	MemoryMB int64 `json:"memory_mb"`
	DiskMB   int64 `json:"disk_mb"`
}

// FreeOn returns what may still be placed on h.
func FreeOn(h store.Host) Free {
	o := Ratios(h)
	f := Free{
		VCPUs:    int64(float64(h.VCPUs)*o.CPU) - h.UsedVCPUs,
		MemoryMB: int64(float64(h.MemoryMB)*o.Memory) - h.UsedMemoryMB,
		DiskMB:   min(int64(float64(h.DiskMB)*o.Disk)-h.UsedDiskMB, h.DiskMB),
	}
	f.VCPUs, f.MemoryMB, f.DiskMB = max(f.VCPUs, 0), max(f.MemoryMB, 0), max(f.DiskMB, 0)
	return f
}

// Scheduler picks hosts.
type Scheduler struct {
	hosts HostLister
	// ReservationTTL bounds how long a placement counts against its host
	// when no newer heartbeat arrives (default 2 min).
	ReservationTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	mu       sync.Mutex
	reserved map[string][]reservation // host id → placements since its last heartbeat
}

type reservation struct {
	at  time.Time
	req Request
}

// New returns a scheduler reading hosts from l.
func New(l HostLister) *Scheduler {
	return &Scheduler{hosts: l, ReservationTTL: 2 * time.Minute, Now: time.Now}
}

// Pick returns the host for a capsule of team and counts the request
// against that host until its next heartbeat.
func (s *Scheduler) Pick(ctx context.Context, team store.Team, req Request) (store.Host, error) {
	hosts, err := s.hosts.ListSchedulableHosts(ctx, team.ID, team.IsBYOC)
	if err != nil {
		return store.Host{}, fmt.Errorf("scheduler: list hosts: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	adjusted := make([]store.Host, len(hosts))
	for i, h := range hosts {
		adjusted[i] = s.withReservations(h, now)
	}
	h, err := Choose(adjusted, req)
	if err != nil {
		return store.Host{}, fmt.Errorf("scheduler: team %s: %w", team.ID, err)
	}
	if s.reserved == nil {
		s.reserved = map[string][]reservation{}
	}
	s.reserved[h.ID] = append(s.reserved[h.ID], reservation{at: now, req: req})
	for _, orig := range hosts {
		if orig.ID == h.ID {
			return orig, nil
		}
	}
	return h, nil
}

// Release forgets the placement of capsuleID on hostID, if this scheduler
// still counts it: its create failed, or it was destroyed before the host's
// next heartbeat. Unknown ids are ignored.
func (s *Scheduler) Release(hostID, capsuleID string) {
	if capsuleID == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.reserved[hostID]
	for i, r := range rs {
		if r.req.CapsuleID == capsuleID {
			rs = append(rs[:i], rs[i+1:]...)
			break
		}
	}
	if len(rs) == 0 {
		delete(s.reserved, hostID)
	} else {
		s.reserved[hostID] = rs
	}
}

func (s *Scheduler) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// withReservations drops h's placements that its last heartbeat already
// reflects (or that expired) and adds the rest to its used figures. The
// caller holds s.mu.
func (s *Scheduler) withReservations(h store.Host, now time.Time) store.Host {
	var inStore map[string]bool
	for _, p := range h.Placed {
		h.UsedVCPUs += p.VCPUs
		h.UsedMemoryMB += p.MemoryMB
		h.UsedDiskMB += p.DiskMB
		if inStore == nil {
			inStore = map[string]bool{}
		}
		inStore[p.CapsuleID] = true
	}
	rs := s.reserved[h.ID]
	if len(rs) == 0 {
		return h
	}
	ttl := s.ReservationTTL
	if ttl <= 0 {
		ttl = 2 * time.Minute
	}
	kept := rs[:0]
	for _, r := range rs {
		if h.LastHeartbeatAt != nil && !r.at.After(*h.LastHeartbeatAt) {
			continue
		}
		if now.Sub(r.at) > ttl {
			continue
		}
		kept = append(kept, r)
		if r.req.CapsuleID != "" && inStore[r.req.CapsuleID] {
			continue // counted above, from the store
		}
		h.UsedVCPUs += r.req.VCPUs
		h.UsedMemoryMB += r.req.MemoryMB
		h.UsedDiskMB += r.req.DiskMB
	}
	if len(kept) == 0 {
		delete(s.reserved, h.ID)
	} else {
		s.reserved[h.ID] = kept
	}
	return h
}

// withIsolation keeps the hosts that run isolation; when hosts are online
// but none runs it, the error says what they lack.
func withIsolation(hosts []store.Host, isolation string) ([]store.Host, error) {
	var (
		kept       []store.Host
		reasons    []string
		available  []string
		online     bool // an online host lacks it
		keptOnline bool // an online host runs it
	)
	for _, h := range hosts {
		c := Capabilities(h)
		ok, reason := c.Supports(isolation)
		if ok {
			kept = append(kept, h)
			keptOnline = keptOnline || h.Status == store.HostOnline
			continue
		}
		if h.Status != store.HostOnline {
			continue
		}
		online = true
		if reason != "" && !slices.Contains(reasons, reason) {
			reasons = append(reasons, reason)
		}
		for _, a := range c.Available() {
			if !slices.Contains(available, a) {
				available = append(available, a)
			}
		}
	}
	if !keptOnline && online {
		slices.Sort(reasons)
		slices.Sort(available)
		return nil, &IsolationError{Isolation: isolation, Reasons: reasons, Available: available}
	}
	return kept, nil
}

// Choose applies the placement rule to hosts. One pass over the
// candidates, no allocation beyond the pinned filter: with a thousand hosts
// it runs on every create.
func Choose(hosts []store.Host, req Request) (store.Host, error) {
	if req.HostID != "" {
		var pinned []store.Host
		for _, h := range hosts {
			if h.ID == req.HostID {
				pinned = append(pinned, h)
			}
		}
		hosts = pinned
	}
	if req.Isolation != "" {
		var err error
		if hosts, err = withIsolation(hosts, req.Isolation); err != nil {
			return store.Host{}, err
		}
	}
	var (
		best      store.Host
		bestScore float64
		found     bool
		online    bool
	)
	for _, h := range hosts {
		online = online || h.Status == store.HostOnline
		if h.Status != store.HostOnline || h.MemoryMB <= 0 || h.VCPUs <= 0 {
			continue
		}
		o := Ratios(h)
		free := FreeOn(h)
		if req.VCPUs > free.VCPUs || req.MemoryMB > free.MemoryMB || req.DiskMB > 0 && h.DiskMB > 0 && req.DiskMB > free.DiskMB {
			continue
		}
		cpuCap := float64(h.VCPUs) * o.CPU
		memCap := float64(h.MemoryMB) * o.Memory
		score := (float64(free.MemoryMB-req.MemoryMB)/memCap + float64(free.VCPUs-req.VCPUs)/cpuCap) / 2
		if !found || score > bestScore || score == bestScore && h.ID < best.ID {
			best, bestScore, found = h, score, true
		}
	}
	if !found {
		if !online {
			return store.Host{}, ErrNoHosts
		}
		return store.Host{}, ErrNoCapacity
	}
	return best, nil
}
