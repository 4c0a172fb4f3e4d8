package container

import (
	"context"
	"fmt"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

var _ runtime.NetworkUpdater = (*Driver)(nil)

// UpdateNetwork implements runtime.NetworkUpdater: the new policy replaces
// the capsule's nftables chain, sets and rate limits in place (established
// connections keep flowing). A capsule without a network right now
// (snapshotted) keeps the policy for its restore.
func (d *Driver) UpdateNetwork(_ context.Context, id string, allowInternet bool, p *runtime.NetworkPolicy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	c, err := d.get(id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.rec.Pool {
		return fmt.Errorf("update network of warm-pool capsule %s: %w", id, runtime.ErrInvalidState)
	}
	if c.rec.State != runtime.StateSnapshotted && c.rec.Net.Veth != "" {
		if err := d.net.SetPolicy(c.rec.Net, allowInternet, p); err != nil {
			return err
		}
	}
	c.rec.Spec.AllowInternet = allowInternet
	c.rec.Spec.Network = p
	return d.save(&c.rec)
}

// netStats adds the capsule's network counters to s.
func (d *Driver) netStats(rec *record, s *runtime.Stats) error {
	if rec.Net.Veth == "" {
		return nil
	}
	n, err := d.net.Counters(rec.Net)
	if err != nil {
		return err
	}
	s.NetBytesIn, s.NetBytesOut, s.NetDroppedPackets = n.BytesIn, n.BytesOut, n.Dropped()
	return nil
}
