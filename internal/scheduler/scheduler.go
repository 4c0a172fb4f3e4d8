// Package scheduler places capsules on hosts. It owns the placement rule
// only: least loaded by free memory and free CPU among the online hosts a
// team may use (a BYOC team's own hosts, otherwise the shared ones).
//
// Invariants:
//   - A host is a candidate only when its free memory covers the request;
//     vCPUs may be overcommitted (up to OvercommitCPU times the host's).
//   - Among candidates the highest score wins, where score is the mean of
//     the free memory fraction and the free CPU fraction after placement;
//     ties break on host ID so placement is deterministic.
//   - Errors are ErrNoHosts (nothing online for the team) or ErrNoCapacity
//     (hosts exist but none fits); both mean "try later" to a caller.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// Errors.
var (
	ErrNoHosts    = errors.New("no host is available")
	ErrNoCapacity = errors.New("no host has enough free capacity")
)

// Request is what a capsule needs.
type Request struct {
	VCPUs    int64
	MemoryMB int64
	DiskMB   int64
}

// HostLister is the part of the store the scheduler reads.
type HostLister interface {
	ListSchedulableHosts(ctx context.Context, teamID string, byoc bool) ([]store.Host, error)
}

// Scheduler picks hosts.
type Scheduler struct {
	hosts HostLister
	// OvercommitCPU is how many vCPUs may be placed per host CPU (default 4).
	OvercommitCPU int64
}

// New returns a scheduler reading hosts from l.
func New(l HostLister) *Scheduler { return &Scheduler{hosts: l, OvercommitCPU: 4} }

// Pick returns the host for a capsule of team.
func (s *Scheduler) Pick(ctx context.Context, team store.Team, req Request) (store.Host, error) {
	hosts, err := s.hosts.ListSchedulableHosts(ctx, team.ID, team.IsBYOC)
	if err != nil {
		return store.Host{}, fmt.Errorf("scheduler: list hosts: %w", err)
	}
	h, err := Choose(hosts, req, s.OvercommitCPU)
	if err != nil {
		return store.Host{}, fmt.Errorf("scheduler: team %s: %w", team.ID, err)
	}
	return h, nil
}

// Choose applies the placement rule to hosts.
func Choose(hosts []store.Host, req Request, overcommit int64) (store.Host, error) {
	if overcommit <= 0 {
		overcommit = 1
	}
	type cand struct {
		h     store.Host
		score float64
	}
	var cands []cand
	for _, h := range hosts {
		if h.Status != store.HostOnline || h.MemoryMB <= 0 || h.VCPUs <= 0 {
			continue
		}
		freeMem := h.MemoryMB - h.UsedMemoryMB - req.MemoryMB
		cpuCap := h.VCPUs * overcommit
		freeCPU := cpuCap - h.UsedVCPUs - req.VCPUs
		if freeMem < 0 || freeCPU < 0 {
			continue
		}
		if h.DiskMB > 0 && h.DiskMB-h.UsedDiskMB < req.DiskMB {
			continue
		}
		score := (float64(freeMem)/float64(h.MemoryMB) + float64(freeCPU)/float64(cpuCap)) / 2
		cands = append(cands, cand{h, score})
	}
	if len(cands) == 0 {
		online := false
		for _, h := range hosts {
			online = online || h.Status == store.HostOnline
		}
		if !online {
			return store.Host{}, ErrNoHosts
		}
		return store.Host{}, ErrNoCapacity
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].score != cands[j].score {
			return cands[i].score > cands[j].score
		}
		return cands[i].h.ID < cands[j].h.ID
	})
	return cands[0].h, nil
}
