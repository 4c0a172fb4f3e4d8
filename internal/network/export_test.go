package network

import "github.com/google/nftables"

// AddResolved exposes addResolved to tests.
var AddResolved = (*Manager).addResolved

// EmptyCommit sends an nftables batch that changes nothing visible (a
// table add of the manager's existing table): the floor of any rule change.
func EmptyCommit(m *Manager) error {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.AddTable(m.table)
	return c.Flush()
}

// ChainHandles returns the handles of the rules in the capsule's chain.
func ChainHandles(m *Manager, key string) ([]uint64, error) {
	m.nft.Lock()
	defer m.nft.Unlock()
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	rules, err := c.GetRules(m.table, &nftables.Chain{Name: chainName(key), Table: m.table})
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, r := range rules {
		out = append(out, r.Handle)
	}
	return out, nil
}
