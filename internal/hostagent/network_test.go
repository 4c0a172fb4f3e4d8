package hostagent_test

import (
	"net/netip"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/network/nettest"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestCapsuleNetworkPolicy drives the network policy through the agent's
// RPC against the fake internet: create with a domain allow-list, resolve
// through the capsule's forwarder (resolv.conf), live update, bad input,
// counters.
func TestCapsuleNetworkPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	nettest.Start(t)
	d := newDirs(t)
	d.tweakDriver = func(c *container.Config) {
		c.Network.DNSUpstream = []string{netip.AddrPortFrom(nettest.DNS, 53).String()}
	}
	h := startHost(t, d, nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	allowed := "allowed." + strings.TrimSuffix(nettest.Zone, ".")

	// Bad input: a malformed rule, rules without internet.
	for name, req := range map[string]*pb.CreateCapsuleRequest{
		"malformed":        {CapsuleId: newID(), AllowInternet: true, Network: &pb.NetworkPolicy{AllowOut: []string{"exa mple.com"}}},
		"rules, no egress": {CapsuleId: newID(), AllowInternet: false, Network: &pb.NetworkPolicy{DenyOut: []string{"0.0.0.0/0"}}},
	} {
		if _, err := c.CreateCapsule(ctx, connect.NewRequest(req)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: got %v, want invalid_argument", name, err)
		}
	}

	pol := &pb.NetworkPolicy{AllowOut: []string{allowed}, DenyOut: []string{"0.0.0.0/0"}}
	capsule := create(t, c, &pb.CreateCapsuleRequest{AllowInternet: true, Network: pol})
	id := capsule.GetCapsuleId()
	if got := capsule.GetNetwork().GetAllowOut(); len(got) != 1 || got[0] != allowed {
		t.Errorf("capsule network = %v", capsule.GetNetwork())
	}
	// wget: an HTTP GET from inside the capsule (busybox nc; busybox wget
	// crashes in the static minimal template), resolving a name first
	// through the capsule's resolv.conf (busybox nslookup).
	wget := func(url string) (string, bool) {
		host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
		script := `set -e; h=` + host + `
case $h in *[a-z]*) h=$(/bin/busybox nslookup $h | /bin/busybox awk '/^Address/ {a=$NF} END {print a}');; esac
printf 'GET / HTTP/1.0\r\n\r\n' | /bin/busybox nc -w 2 $h 80`
		res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/busybox", Args: []string{"sh", "-c", script}}))
		if err != nil {
			t.Fatal(err)
		}
		out := string(res.Msg.GetStdout())
		ok := res.Msg.GetExitCode() == 0 && strings.Contains(out, "200 OK")
		if !ok {
			t.Logf("GET %s: exit %d: %q %q", url, res.Msg.GetExitCode(), out, res.Msg.GetStderr())
		}
		return out, ok
	}
	if out := execOK(t, c, id, "/bin/busybox", "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver ") {
		t.Errorf("resolv.conf: %q", out)
	}
	if body, ok := wget("http://" + allowed + "/"); !ok || !strings.Contains(body, nettest.Web1.String()) {
		t.Errorf("allowed name: %q %v", body, ok)
	}
	if _, ok := wget("http://" + nettest.Web2.String() + "/"); ok {
		t.Error("unresolved neighbour reachable")
	}
	if _, ok := wget("http://neighbour." + strings.TrimSuffix(nettest.Zone, ".") + "/"); ok {
		t.Error("name off the allow-list resolved and reached")
	}

	// Live update: allow the neighbour's address.
	res, err := c.UpdateCapsuleNetwork(ctx, connect.NewRequest(&pb.UpdateCapsuleNetworkRequest{
		CapsuleId: id, AllowInternet: true,
		Network: &pb.NetworkPolicy{AllowOut: []string{allowed, nettest.Web2.String()}, DenyOut: []string{"0.0.0.0/0"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetCapsule().GetNetwork().GetAllowOut(); len(got) != 2 {
		t.Errorf("updated capsule network = %v", got)
	}
	if _, ok := wget("http://" + nettest.Web2.String() + "/"); !ok {
		t.Error("newly allowed address unreachable")
	}
	// A bad update changes nothing.
	for _, bad := range []*pb.UpdateCapsuleNetworkRequest{
		{CapsuleId: id, AllowInternet: true, Network: &pb.NetworkPolicy{AllowOut: []string{"10.0.0.0/33"}}},
		{CapsuleId: id, AllowInternet: false, Network: &pb.NetworkPolicy{AllowOut: []string{"1.2.3.4"}}},
	} {
		if _, err := c.UpdateCapsuleNetwork(ctx, connect.NewRequest(bad)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("bad update: got %v, want invalid_argument", err)
		}
	}
	if _, err := c.UpdateCapsuleNetwork(ctx, connect.NewRequest(&pb.UpdateCapsuleNetworkRequest{CapsuleId: "cl-nope", AllowInternet: true})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown capsule: got %v, want not_found", err)
	}
	if _, ok := wget("http://" + nettest.Web2.String() + "/"); !ok {
		t.Error("a rejected update changed the policy")
	}
	m, err := c.GetCapsuleMetrics(ctx, connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Msg.GetNetwork(); n.GetBytesOut() == 0 || n.GetBytesIn() == 0 || n.GetDroppedPackets() == 0 {
		t.Errorf("network counters %+v", n)
	}
	// No internet at all.
	if _, err := c.UpdateCapsuleNetwork(ctx, connect.NewRequest(&pb.UpdateCapsuleNetworkRequest{CapsuleId: id, AllowInternet: false})); err != nil {
		t.Fatal(err)
	}
	if _, ok := wget("http://" + nettest.Web2.String() + "/"); ok {
		t.Error("allow_internet=false still reaches the internet")
	}
}
