package network_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// TestAddResolvedCached: answering the same name again does not pay for
// another nftables commit (10-20 ms) while the element lives long enough.
func TestAddResolvedCached(t *testing.T) {
	m := newManager(t)
	a, err := m.Setup("rfast", true, &runtime.NetworkPolicy{AllowOut: []string{"a.example"}, DenyOut: []string{"0.0.0.0/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.Teardown(a) }()
	ip := []netip.Addr{netip.MustParseAddr("198.51.100.10")}
	for i := range 5 {
		start := time.Now()
		if err := network.AddResolved(m, "rfast", ip, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); i > 0 && d > time.Millisecond {
			t.Errorf("add %d took %v: the known element was written again", i, d)
		}
	}
}
