package network_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestTeardownUnderTraffic (issue 18): capsules whose veth is busy
// sending through the rate limiter (the veth's ingress redirected to the
// capsule's IFB) are torn down, several at once, while they send. Each
// Teardown finishes in bounded time and leaves no veth, IFB, qdisc or
// namespace. A gVisor capsule's Destroy once blocked for minutes in the
// IFB's RTM_DELLINK after its veth had gone; Teardown now removes the
// redirect and the IFB before the veth, and bounds every link deletion.
// Subnet 10.48.0.0/24 (the gVisor range).
func TestTeardownUnderTraffic(t *testing.T) {
	testutil.RequireRoot(t)
	removeStaleTables(t)
	tag := fmt.Sprintf("wtd%d", os.Getpid()%100000)
	m, err := network.New(network.Config{Subnet: netip.MustParsePrefix("10.48.0.0/24"), Table: tag, NetnsPrefix: tag + "-"}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); _ = m.RemoveTable() })
	const capsules, rounds = 4, 5
	pol := &runtime.NetworkPolicy{EgressMBps: 50, IngressMBps: 50, BurstMB: 1}
	for r := range rounds {
		var allocs []network.Allocation
		for i := range capsules {
			a, err := m.Setup(fmt.Sprintf("td%d-%d", r, i), false, pol)
			if err != nil {
				t.Fatal(err)
			}
			allocs = append(allocs, a)
			if _, err := netlink.LinkByName(network.IFBPrefix + a.Key); err != nil {
				t.Fatalf("no IFB for %s: %v", a.Key, err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		var senders sync.WaitGroup
		for _, a := range allocs {
			c, err := nettest.DialIn(ctx, a.Netns, "udp4", net.JoinHostPort(network.InsideGateway.String(), "9"))
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			senders.Add(1)
			go func() {
				defer senders.Done()
				defer c.Close()
				buf := make([]byte, 1400)
				for ctx.Err() == nil {
					_, _ = c.Write(buf)
				}
			}()
		}
		time.Sleep(200 * time.Millisecond) // traffic through every IFB
		var wg sync.WaitGroup
		errs := make([]error, len(allocs))
		took := make([]time.Duration, len(allocs))
		for i, a := range allocs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				errs[i] = m.Teardown(a)
				took[i] = time.Since(t0)
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cancel()
			t.Fatalf("round %d: Teardown of capsules under traffic did not return within a minute", r)
		}
		cancel()
		senders.Wait()
		for i, a := range allocs {
			if errs[i] != nil {
				t.Errorf("round %d: Teardown %s: %v", r, a.Key, errs[i])
			}
			if took[i] > 10*time.Second {
				t.Errorf("round %d: Teardown %s took %v", r, a.Key, took[i])
			}
			for _, name := range []string{a.Veth, network.IFBPrefix + a.Key} {
				if _, err := netlink.LinkByName(name); err == nil {
					t.Errorf("round %d: %s left after Teardown", r, name)
				}
			}
			if _, err := os.Stat(a.Netns); !os.IsNotExist(err) {
				t.Errorf("round %d: netns %s left: %v", r, a.Netns, err)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, network.IFBPrefix+"td") {
			t.Errorf("link %s left", l.Attrs().Name)
		}
	}
}
