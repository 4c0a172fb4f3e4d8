package nettest_test

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestInternet(t *testing.T) {
	testutil.RequireRoot(t)
	in := nettest.Start(t)
	if err := in.CheckRoutes(); err != nil {
		t.Fatal(err)
	}
	body, err := get(nettest.URL(nettest.Web3, "/"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello from " + nettest.Web3.String(); !strings.Contains(body, want) {
		t.Errorf("body %q, want %q", body, want)
	}
	for _, proto := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("x.wild."+nettest.Zone, dns.TypeA)
		cl := &dns.Client{Net: proto, Timeout: 2 * time.Second}
		r, _, err := cl.Exchange(m, netip.AddrPortFrom(nettest.DNS, 53).String())
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		if len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IP(nettest.Web4.AsSlice())) {
			t.Errorf("%s: answer %v", proto, r.Answer)
		}
		m.SetQuestion("nope."+nettest.Zone, dns.TypeA)
		if r, _, err = cl.Exchange(m, netip.AddrPortFrom(nettest.DNS, 53).String()); err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: nope: %v %v", proto, r, err)
		}
	}
}

func get(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	r, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	return string(b), err
}
