package network_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkSetPolicy: the warm-pool take's policy step with 20 other
// capsules on the host: releasing a held capsule (SetupHeld, then
// SetPolicy with the default policy: one rule added) against rewriting a
// capsule's chain (what the take did before) and an nftables commit that
// changes nothing (the floor of any rule change), same run.
func BenchmarkSetPolicy(b *testing.B) {
	testutil.RequireRoot(b)
	tag := fmt.Sprintf("wsp%d", os.Getpid()%100000)
	m, err := network.New(network.Config{Subnet: netip.MustParsePrefix("10.5.0.0/24"), Table: tag, NetnsPrefix: tag + "-", NoDNS: true}, slog.Default())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close(); _ = m.RemoveTable() })
	var all []network.Allocation
	b.Cleanup(func() {
		for _, a := range all {
			_ = m.Teardown(a)
		}
	})
	for i := range 21 {
		a, err := m.Setup(fmt.Sprintf("sp%d", i), false, nil)
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, a)
	}
	a := all[0]
	var release, rewrite, floor time.Duration
	b.ResetTimer()
	for i := range b.N {
		h, err := m.SetupHeld(fmt.Sprintf("sph%d", i), true, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := m.SetPolicy(h, true, nil); err != nil {
			b.Fatal(err)
		}
		release += time.Since(t0)
		if err := m.Teardown(h); err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		if err := network.EmptyCommit(m); err != nil {
			b.Fatal(err)
		}
		floor += time.Since(t0)
		t0 = time.Now()
		if err := m.SetPolicy(a, i%2 == 0, nil); err != nil {
			b.Fatal(err)
		}
		rewrite += time.Since(t0)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) / 1000 }
	b.ReportMetric(ms(release), "release_ms")
	b.ReportMetric(ms(rewrite), "rewrite_ms")
	b.ReportMetric(ms(floor), "empty_commit_ms")
}
