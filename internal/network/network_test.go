package network_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func newManager(t testing.TB) *network.Manager {
	t.Helper()
	return newManagerLog(t, slog.Default())
}

func newManagerLog(t testing.TB, log *slog.Logger) *network.Manager {
	t.Helper()
	testutil.RequireRoot(t)
	removeStaleTables(t)
	tag := fmt.Sprintf("wnt%d", os.Getpid()%100000)
	m, err := network.New(network.Config{
		Subnet: netip.MustParsePrefix("10.250.0.0/24"), Table: tag, NetnsPrefix: tag + "-",
		DNSUpstream: []string{netip.AddrPortFrom(nettest.DNS, 53).String()},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); _ = m.RemoveTable() })
	return m
}

// listenIn opens a TCP listener inside a namespace.
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, _ := netns.Get()
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp4", addr)
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestSetupTeardown(t *testing.T) {
	m := newManager(t)
	base, err := m.RuleCount()
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Setup("k1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Setup("k2", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(a); _ = m.Teardown(b) })
	if a.Guest == b.Guest || a.Host == b.Host {
		t.Errorf("addresses reused: %+v %+v", a, b)
	}
	if got, want := a.Guest, a.Host.Next(); got != want {
		t.Errorf("guest = %s, want %s", got, want)
	}
	if n, _ := m.RuleCount(); n <= base {
		t.Errorf("rules = %d, want more than the base %d", n, base)
	}
	// The host reaches a service in the namespace (listening on the inside
	// address) at the capsule's host-side address.
	ln := listenIn(t, a.Netns, net.JoinHostPort(network.InsideAddr.String(), "8080"))
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(a.Guest.String(), "8080"), 2*time.Second)
	if err != nil {
		t.Errorf("host cannot reach the namespace: %v", err)
	} else {
		c.Close()
	}
	if err := m.SetInternet(b, false); err != nil {
		t.Fatal(err)
	}
	for _, al := range []network.Allocation{a, b} {
		if err := m.Teardown(al); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(al.Netns); !os.IsNotExist(err) {
			t.Errorf("netns %s left: %v", al.Netns, err)
		}
		if _, err := netlink.LinkByName(al.Veth); err == nil {
			t.Errorf("veth %s left", al.Veth)
		}
	}
	if n, _ := m.RuleCount(); n != base {
		t.Errorf("rules after teardown = %d, want the base %d", n, base)
	}
	if err := m.Teardown(a); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	// Freed addresses can be taken again; used ones cannot.
	c1, err := m.Setup("k3", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(c1) })
	if err := m.Adopt(network.Allocation{Key: "other", Index: a.Index}); err != nil {
		t.Errorf("freed index %d not free: %v", a.Index, err)
	}
	if err := m.Adopt(network.Allocation{Key: "other2", Index: c1.Index}); err == nil {
		t.Errorf("used index %d adopted twice", c1.Index)
	}
}

func TestSweepRemovesOrphans(t *testing.T) {
	m := newManager(t)
	a, err := m.Setup("keep", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(a) })
	b, err := m.Setup("orphan", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Teardown(b) })
	before, _ := m.RuleCount()
	if err := m.Sweep(func(k string) bool { return k == "keep" }, []string{"keep", "orphan"}); err != nil {
		t.Fatal(err)
	}
	if n, _ := m.RuleCount(); n >= before || n <= before/2 {
		t.Errorf("rules = %d, want the orphan's removed from %d", n, before)
	}
	if _, err := os.Stat(b.Netns); !os.IsNotExist(err) {
		t.Errorf("orphan netns left: %v", err)
	}
	if _, err := os.Stat(a.Netns); err != nil {
		t.Errorf("kept netns removed: %v", err)
	}
	ns, _ := m.Namespaces()
	if len(ns) != 1 {
		t.Errorf("namespaces = %v, want just the kept one", ns)
	}
}

// removeStaleTables deletes the nftables tables of this package's test
// processes that died without cleaning up (a killed go test): they claim
// the same subnet, and their forward chain would drop every capsule's
// traffic of later runs ("ip saddr 10.250.0.0/24 drop").
func removeStaleTables(t testing.TB) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		rest, ok := strings.CutPrefix(tb.Name, "wnt")
		pid, err := strconv.Atoi(rest)
		if !ok || err != nil || pid == os.Getpid()%100000 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a live process (another run)
		}
		t.Logf("removing table %s of a dead test process", tb.Name)
		c.DelTable(tb)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}
