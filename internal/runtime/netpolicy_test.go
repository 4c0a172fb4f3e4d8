package runtime_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

func TestNetworkPolicyCompile(t *testing.T) {
	p := &runtime.NetworkPolicy{
		AllowOut:     []string{"203.0.113.0/24", "198.51.100.7", "GitHub.com.", "*.pypi.org"},
		DenyOut:      []string{"0.0.0.0/0", "198.51.100.0/25", "evil.example"},
		AllowPrivate: []string{"10.1.0.0/16"},
		EgressMBps:   10,
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(c.AllowNets), "[203.0.113.0/24 198.51.100.7/32]"; got != want {
		t.Errorf("allow nets %s, want %s", got, want)
	}
	if !c.DefaultDeny || !c.DomainAllowList() || len(c.DenyNets) != 1 || c.DenyNets[0] != netip.MustParsePrefix("198.51.100.0/25") {
		t.Errorf("compiled %+v", c)
	}
	if c.EgressBytes != 10<<20 || c.IngressBytes != runtime.DefaultIngressMBps<<20 || c.BurstBytes != runtime.DefaultBurstMB<<20 {
		t.Errorf("rates %d %d %d", c.EgressBytes, c.IngressBytes, c.BurstBytes)
	}
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"github.com.", true},
		{"GITHUB.COM", true},
		{"api.github.com", false},
		{"files.pypi.org.", true},
		{"pypi.org", false},
		{"evil.example", false},
		{"other.org", false},
	} {
		if got, _ := c.NameAllowed(tc.name); got != tc.want {
			t.Errorf("NameAllowed(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Without a default deny, only deny names are refused.
	c2, err := (&runtime.NetworkPolicy{DenyOut: []string{"*.evil.example"}}).Compile()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := c2.NameAllowed("a.evil.example"); ok {
		t.Error("denied wildcard answered")
	}
	if ok, _ := c2.NameAllowed("good.example"); !ok {
		t.Error("unlisted name refused without a default deny")
	}
	// An allow rule wins over a deny rule for the same name.
	c3, _ := (&runtime.NetworkPolicy{AllowOut: []string{"a.example"}, DenyOut: []string{"0.0.0.0/0", "a.example"}}).Compile()
	if ok, _ := c3.NameAllowed("a.example"); !ok {
		t.Error("allow did not win over deny")
	}
}

func TestNetworkPolicyErrors(t *testing.T) {
	many := make([]string, runtime.MaxNetworkRules+1)
	for i := range many {
		many[i] = "198.51.100.1"
	}
	for _, tc := range []struct {
		p    runtime.NetworkPolicy
		want string
	}{
		{runtime.NetworkPolicy{AllowOut: []string{"10.0.0.0/33"}}, `network.allow_out[0] "10.0.0.0/33": not a valid CIDR`},
		{runtime.NetworkPolicy{DenyOut: []string{"1.2.3"}}, `network.deny_out[0] "1.2.3": not a valid IP address`},
		{runtime.NetworkPolicy{DenyOut: []string{"ok.example", "exa mple.com"}}, `network.deny_out[1] "exa mple.com": invalid character ' '`},
		{runtime.NetworkPolicy{DenyOut: []string{"a.*.example"}}, `invalid character '*'`},
		{runtime.NetworkPolicy{DenyOut: []string{"localhost"}}, `at least two labels`},
		{runtime.NetworkPolicy{DenyOut: []string{"2001:db8::/32"}}, `IPv4-only`},
		{runtime.NetworkPolicy{DenyOut: []string{""}}, `empty rule`},
		{runtime.NetworkPolicy{AllowOut: []string{"github.com"}}, `domain names need deny_out to contain 0.0.0.0/0`},
		{runtime.NetworkPolicy{AllowPrivate: []string{"corp.example"}}, `network.allow_private[0]`},
		{runtime.NetworkPolicy{EgressMBps: -1}, `network.egress_mbps -1`},
		{runtime.NetworkPolicy{BurstMB: runtime.MaxRateMBps + 1}, `network.burst_mb`},
		{runtime.NetworkPolicy{AllowOut: many}, `1001 rules, at most 1000`},
	} {
		_, err := tc.p.Compile()
		if err == nil || !errors.Is(err, runtime.ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.p, err, tc.want)
		}
	}
}

func FuzzNetworkPolicy(f *testing.F) {
	for _, s := range []string{"203.0.113.0/24", "1.2.3.4", "*.example.com", "a..b", "::1", "0.0.0.0/0", "x_y.example."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range []runtime.NetworkPolicy{{AllowOut: []string{s}, DenyOut: []string{"0.0.0.0/0"}}, {DenyOut: []string{s}}} {
			c, err := p.Compile()
			if err != nil {
				if !errors.Is(err, runtime.ErrInvalidSpec) {
					t.Fatalf("%q: untyped error %v", s, err)
				}
				continue
			}
			for _, pf := range append(c.AllowNets, c.DenyNets...) {
				if !pf.Addr().Is4() || pf != pf.Masked() {
					t.Fatalf("%q: bad prefix %s", s, pf)
				}
			}
			for _, n := range append(c.AllowNames, c.DenyNames...) {
				if n.Name == "" || strings.ContainsAny(n.Name, " */:") {
					t.Fatalf("%q: bad name %+v", s, n)
				}
				probe := n.Name
				if n.Wildcard {
					probe = "x." + probe
				}
				if !n.Matches(probe + ".") {
					t.Fatalf("%q: rule %v does not match %q", s, n, probe)
				}
			}
		}
	})
}
