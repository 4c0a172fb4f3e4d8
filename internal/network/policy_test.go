package network_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

const blockedWait = 700 * time.Millisecond

// reach reports whether the capsule opens a TCP connection to addr.
func reach(t *testing.T, a network.Allocation, addr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), blockedWait)
	defer cancel()
	c, err := nettest.DialIn(ctx, a.Netns, "tcp4", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// fetch GETs url from inside the capsule.
func fetch(a network.Allocation, url string) (string, error) {
	r, err := nettest.HTTPClientIn(a.Netns, 3*time.Second).Get(url)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	return string(b), err
}

// resolve asks the capsule's DNS server (its gateway) over proto.
func resolve(t *testing.T, a network.Allocation, server netip.Addr, proto, name string) (*dns.Msg, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := nettest.DialIn(ctx, a.Netns, proto+"4", netip.AddrPortFrom(server, 53).String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

func web(a netip.Addr) string { return netip.AddrPortFrom(a, 80).String() }

func setup(t *testing.T, m *network.Manager, key string, internet bool, p *runtime.NetworkPolicy) network.Allocation {
	t.Helper()
	a, err := m.Setup(key, internet, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(a) })
	return a
}

func TestPolicyModes(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	allowed, neighbour := "allowed."+nettest.Zone, "neighbour."+nettest.Zone

	t.Run("default internet", func(t *testing.T) {
		a := setup(t, m, "pdef", true, nil)
		body, err := fetch(a, nettest.URL(nettest.Web1, "/"))
		if err != nil || !strings.Contains(body, nettest.Web1.String()) {
			t.Fatalf("fetch: %q %v", body, err)
		}
		for _, proto := range []string{"udp", "tcp"} {
			r, err := resolve(t, a, network.InsideGateway, proto, "x.wild."+nettest.Zone)
			if err != nil || len(r.Answer) != 1 {
				t.Fatalf("%s resolve via forwarder: %v %v", proto, r, err)
			}
		}
		// Outside resolvers are reachable when no domain rule exists.
		if _, err := resolve(t, a, nettest.DNS, "udp", allowed); err != nil {
			t.Errorf("outside resolver: %v", err)
		}
	})
	t.Run("no internet", func(t *testing.T) {
		a := setup(t, m, "pnone", false, nil)
		if reach(t, a, web(nettest.Web1)) {
			t.Error("reached the internet without allow_internet")
		}
		r, err := resolve(t, a, network.InsideGateway, "udp", allowed)
		if err != nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("forwarder answered without internet: %v %v", r, err)
		}
	})
	t.Run("allow by CIDR", func(t *testing.T) {
		a := setup(t, m, "pcidr", true, &runtime.NetworkPolicy{AllowOut: []string{"203.0.113.0/24"}, DenyOut: []string{"0.0.0.0/0"}})
		if !reach(t, a, web(nettest.Web3)) || !reach(t, a, web(nettest.Web4)) {
			t.Error("allowed CIDR unreachable")
		}
		if reach(t, a, web(nettest.Web1)) {
			t.Error("denied address reachable")
		}
	})
	t.Run("allow wins over a broad deny", func(t *testing.T) {
		a := setup(t, m, "pwin", true, &runtime.NetworkPolicy{AllowOut: []string{nettest.Web1.String()}, DenyOut: []string{"198.51.100.0/24"}})
		if !reach(t, a, web(nettest.Web1)) {
			t.Error("allowed address unreachable")
		}
		if reach(t, a, web(nettest.Web2)) {
			t.Error("denied neighbour reachable")
		}
		if !reach(t, a, web(nettest.Web3)) {
			t.Error("address outside the deny unreachable")
		}
	})
	t.Run("allow by domain", func(t *testing.T) {
		a := setup(t, m, "pdom", true, &runtime.NetworkPolicy{AllowOut: []string{allowed, "*.wild." + nettest.Zone}, DenyOut: []string{"0.0.0.0/0"}})
		if reach(t, a, web(nettest.Web1)) {
			t.Error("allowed name's address reachable before it was resolved")
		}
		r, err := resolve(t, a, network.InsideGateway, "udp", allowed)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != nettest.Web1.String() {
			t.Fatalf("resolve allowed: %v %v", r, err)
		}
		if body, err := fetch(a, nettest.URL(nettest.Web1, "/")); err != nil || !strings.Contains(body, "hello") {
			t.Errorf("resolved address: %q %v", body, err)
		}
		// The neighbour in the same /24 was never resolved: dropped.
		if reach(t, a, web(nettest.Web2)) {
			t.Error("unresolved neighbour reachable")
		}
		if r, err := resolve(t, a, network.InsideGateway, "tcp", neighbour); err != nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("forwarder answered a name off the allow-list: %v %v", r, err)
		}
		if r, err := resolve(t, a, network.InsideGateway, "tcp", "deep.x.wild."+nettest.Zone); err != nil || len(r.Answer) != 1 {
			t.Errorf("wildcard over tcp: %v %v", r, err)
		}
		if !reach(t, a, web(nettest.Web4)) {
			t.Error("wildcard name's address unreachable after resolving")
		}
		// Outside resolvers are unreachable (UDP and TCP 53, DoT 853).
		for _, proto := range []string{"udp", "tcp"} {
			if _, err := resolve(t, a, nettest.DNS, proto, allowed); err == nil {
				t.Errorf("outside resolver answered over %s", proto)
			}
		}
		if reach(t, a, netip.AddrPortFrom(nettest.Web1, 853).String()) {
			t.Error("DoT port reachable")
		}
		c, err := m.Counters(a)
		if err != nil || c.DroppedPackets["outside-resolver"] == 0 || c.DroppedPackets["deny_out 0.0.0.0/0"] == 0 || c.BytesOut == 0 {
			t.Errorf("counters %+v %v", c, err)
		}
	})
}

// TestAlwaysBlocked: the host, other capsules, link-local with the metadata
// address and private ranges are unreachable in every mode.
func TestAlwaysBlocked(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	other := setup(t, m, "bother", true, nil)
	ln := listenIn(t, other.Netns, net.JoinHostPort(network.InsideAddr.String(), "8080")) // reached at other.Guest from the host
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hostLn, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hostPort := hostLn.Addr().(*net.TCPAddr).Port
	hostAddrs := []string{}
	addrs, _ := net.InterfaceAddrs()
	for _, ad := range addrs {
		if ipn, ok := ad.(*net.IPNet); ok && ipn.IP.To4() != nil {
			hostAddrs = append(hostAddrs, net.JoinHostPort(ipn.IP.String(), fmt.Sprint(hostPort)))
		}
	}
	// Sanity: from the host itself the targets answer.
	if c, err := net.DialTimeout("tcp4", net.JoinHostPort(other.Guest.String(), "8080"), time.Second); err != nil {
		t.Fatalf("other capsule's listener: %v", err)
	} else {
		c.Close()
	}
	modes := map[string]struct {
		internet bool
		p        *runtime.NetworkPolicy
	}{
		"default":    {true, nil},
		"none":       {false, nil},
		"allow-all":  {true, &runtime.NetworkPolicy{AllowOut: []string{"0.0.0.0/0"}}},
		"domain":     {true, &runtime.NetworkPolicy{AllowOut: []string{"allowed." + nettest.Zone, "10.0.0.0/8", "169.254.169.254"}, DenyOut: []string{"0.0.0.0/0"}}},
		"allow-priv": {true, &runtime.NetworkPolicy{AllowPrivate: []string{"192.168.0.0/16"}}},
	}
	i := 0
	for name, mode := range modes {
		i++
		t.Run(name, func(t *testing.T) {
			a := setup(t, m, fmt.Sprintf("blk%d", i), mode.internet, mode.p)
			targets := append([]string{
				net.JoinHostPort(other.Guest.String(), "8080"), // another capsule
				net.JoinHostPort(other.Host.String(), fmt.Sprint(hostPort)),
				net.JoinHostPort(a.Host.String(), fmt.Sprint(hostPort)), // own gateway, not port 53
				net.JoinHostPort(a.Host.String(), "22"),
				net.JoinHostPort(network.InsideGateway.String(), fmt.Sprint(hostPort)), // the gateway as the capsule sees it
				net.JoinHostPort(network.InsideGateway.String(), "22"),
				"169.254.169.254:80", "127.0.0.1:" + fmt.Sprint(hostPort),
				"10.0.0.1:80", "172.16.0.1:80", "100.64.0.1:80",
			}, hostAddrs...)
			var wg sync.WaitGroup
			for _, tg := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if reach(t, a, tg) {
						t.Errorf("reached %s", tg)
					}
				}()
			}
			wg.Wait()
			if mode.internet && mode.p != nil && mode.p.AllowPrivate != nil {
				c, _ := m.Counters(a)
				if c.DroppedPackets["private-range"] == 0 {
					t.Errorf("no private-range drops counted: %+v", c)
				}
			}
		})
	}
}

func TestPolicyLiveUpdate(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	a := setup(t, m, "plive", true, nil)
	// An established connection to Web1 ...
	resp, err := nettest.HTTPClientIn(a.Netns, 0).Get(nettest.URL(nettest.Web1, "/hold"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	// ... survives a change to a policy that keeps Web1 allowed.
	pol := &runtime.NetworkPolicy{AllowOut: []string{nettest.Web1.String(), "203.0.113.0/24"}, DenyOut: []string{"0.0.0.0/0"}}
	if err := m.SetPolicy(a, true, pol); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("established connection dropped by the policy change: %v", err)
		}
	}
	if reach(t, a, web(nettest.Web2)) {
		t.Error("new policy not in force: Web2 reachable")
	}
	if !reach(t, a, web(nettest.Web1)) || !reach(t, a, web(nettest.Web3)) {
		t.Error("new policy: allowed destinations unreachable")
	}
	// An invalid policy changes nothing.
	if err := m.SetPolicy(a, true, &runtime.NetworkPolicy{AllowOut: []string{"not a name"}}); err == nil {
		t.Fatal("invalid policy accepted")
	}
	if !reach(t, a, web(nettest.Web3)) || reach(t, a, web(nettest.Web2)) {
		t.Error("invalid policy changed the rules")
	}
	// Back to everything.
	if err := m.SetPolicy(a, true, nil); err != nil {
		t.Fatal(err)
	}
	if !reach(t, a, web(nettest.Web2)) {
		t.Error("Web2 unreachable after reset")
	}
}

// TestRateLimit: a capsule limited to 10 MB/s never moves more than 1.5×
// that over 5 s, in either direction.
func TestRateLimit(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	a := setup(t, m, "prate", true, &runtime.NetworkPolicy{EgressMBps: 10, IngressMBps: 10, BurstMB: 1})
	const d = 5 * time.Second
	limit := 1.5 * 10 * float64(1<<20) * d.Seconds()

	// Egress: upload for 5 s.
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	pr, pw := io.Pipe()
	var sent int64
	go func() {
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			n, err := pw.Write(buf)
			sent += int64(n)
			if err != nil {
				return
			}
		}
		pw.Close()
	}()
	start := time.Now()
	before, _ := m.Counters(a)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, nettest.URL(nettest.Web1, "/sink"), pr)
	_, _ = nettest.HTTPClientIn(a.Netns, 0).Do(req)
	after, _ := m.Counters(a)
	out := float64(after.BytesOut - before.BytesOut)
	el := time.Since(start)
	t.Logf("egress: %.1f MB in %v (%.1f MB/s)", out/(1<<20), el, out/(1<<20)/el.Seconds())
	if out > limit {
		t.Errorf("egress moved %.1f MB in 5 s, limit %.1f MB", out/(1<<20), limit/(1<<20))
	}
	if out < 0.5*limit/1.5 {
		t.Errorf("egress only %.1f MB: the shaper is far below its rate", out/(1<<20))
	}

	// Ingress: download for 5 s.
	ctx2, cancel2 := context.WithTimeout(context.Background(), d)
	defer cancel2()
	req2, _ := http.NewRequestWithContext(ctx2, http.MethodGet, nettest.URL(nettest.Web1, "/bytes?n=10000000000"), nil)
	var got int64
	start = time.Now()
	if resp, err := nettest.HTTPClientIn(a.Netns, 0).Do(req2); err == nil {
		got, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	el = time.Since(start)
	t.Logf("ingress: %.1f MB in %v (%.1f MB/s)", float64(got)/(1<<20), el, float64(got)/(1<<20)/el.Seconds())
	if float64(got) > limit {
		t.Errorf("ingress moved %.1f MB in 5 s, limit %.1f MB", float64(got)/(1<<20), limit/(1<<20))
	}
	if float64(got) < 0.5*limit/1.5 {
		t.Errorf("ingress only %.1f MB", float64(got)/(1<<20))
	}
}

// TestHeldCapsule: a capsule set up held (a warm-pool capsule) has no
// egress and no name resolution; SetPolicy with the policy it was held
// with releases it by adding its dispatch rule only (its chain is not
// rewritten: same rule handles); a held capsule given another policy gets
// that policy in full.
func TestHeldCapsule(t *testing.T) {
	m := newManager(t)
	nettest.Start(t)
	a, err := m.SetupHeld("phold", true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(a) })
	if reach(t, a, web(nettest.Web1)) {
		t.Fatal("held capsule reached the internet")
	}
	if r, err := resolve(t, a, network.InsideGateway, "udp", "allowed."+nettest.Zone); err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("held capsule resolved a name: %v %v", r, err)
	}
	before, err := network.ChainHandles(m, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetPolicy(a, true, nil); err != nil {
		t.Fatal(err)
	}
	if !reach(t, a, web(nettest.Web1)) {
		t.Fatal("released capsule cannot reach the internet")
	}
	after, err := network.ChainHandles(m, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) || len(after) == 0 {
		t.Errorf("release rewrote the chain: rule handles %v, then %v", before, after)
	}
	if r, err := resolve(t, a, network.InsideGateway, "udp", "allowed."+nettest.Zone); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("released capsule cannot resolve: %v %v", r, err)
	}
	// Counters still work after the release.
	if _, err := m.Counters(a); err != nil {
		t.Fatal(err)
	}

	// Taken with another policy: enforced in full.
	b, err := m.SetupHeld("phold2", true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(b) })
	pol := &runtime.NetworkPolicy{AllowOut: []string{nettest.Web1.String()}, DenyOut: []string{"0.0.0.0/0"}}
	if err := m.SetPolicy(b, true, pol); err != nil {
		t.Fatal(err)
	}
	if !reach(t, b, web(nettest.Web1)) || reach(t, b, web(nettest.Web2)) {
		t.Error("held capsule taken with an allow-list: policy not enforced")
	}
	// Without internet: nothing, although it was held with internet.
	c, err := m.SetupHeld("phold3", true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(c) })
	if err := m.SetPolicy(c, false, nil); err != nil {
		t.Fatal(err)
	}
	if reach(t, c, web(nettest.Web1)) {
		t.Error("held capsule taken without internet reached the internet")
	}
}

// TestRateLimitSparesEnvd: the agent's traffic with envd (the API's data
// path: exec output, file transfers) is not shaped by the capsule's
// network rate limits, in either direction, while other traffic of the
// capsule is (TestRateLimit).
func TestRateLimitSparesEnvd(t *testing.T) {
	m := newManager(t)
	a := setup(t, m, "penvd", true, &runtime.NetworkPolicy{EgressMBps: 10, IngressMBps: 10, BurstMB: 1})
	const size = 64 << 20 // 6.4 s each way at the limit
	ln := listenIn(t, a.Netns, fmt.Sprintf("0.0.0.0:%d", runtime.EnvdPort))
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// One byte says the direction: 'd' download, 'u' upload.
				var op [1]byte
				if _, err := io.ReadFull(c, op[:]); err != nil {
					return
				}
				if op[0] == 'd' {
					_, _ = io.CopyN(c, zeros{}, size)
					return
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	addr := netip.AddrPortFrom(a.Guest, runtime.EnvdPort).String()
	for _, op := range []byte{'d', 'u'} {
		c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := c.Write([]byte{op}); err != nil {
			t.Fatal(err)
		}
		var n int64
		if op == 'd' {
			n, err = io.Copy(io.Discard, c)
		} else {
			n, err = io.CopyN(c, zeros{}, size)
		}
		c.Close()
		el := time.Since(start)
		rate := float64(n) / (1 << 20) / el.Seconds()
		t.Logf("%c: %d MB in %v (%.0f MB/s; the capsule's limit is 10)", op, n>>20, el, rate)
		if err != nil || n != size {
			t.Fatalf("%c: %d bytes, %v", op, n, err)
		}
		if rate < 40 {
			t.Errorf("%c: envd traffic shaped: %.0f MB/s with a 10 MB/s limit", op, rate)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
