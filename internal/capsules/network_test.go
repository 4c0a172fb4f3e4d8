package capsules_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func (a *agent) UpdateCapsuleNetwork(_ context.Context, r *connect.Request[pb.UpdateCapsuleNetworkRequest]) (*connect.Response[pb.UpdateCapsuleNetworkResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.netErr != nil {
		return nil, a.netErr
	}
	a.netUpdates = append(a.netUpdates, r.Msg)
	return connect.NewResponse(&pb.UpdateCapsuleNetworkResponse{Capsule: &pb.Capsule{CapsuleId: r.Msg.GetCapsuleId()}}), nil
}

func kindOf(err error) capsules.Kind {
	var se *capsules.Error
	if errors.As(err, &se) {
		return se.Kind
	}
	return ""
}

// TestCreateInternetPrecedence: the request's allow_internet, else the
// template's default, else the team's default, else on; the platform
// switch caps it and refuses an explicit request with permission_denied.
func TestCreateInternetPrecedence(t *testing.T) {
	on, off := true, false
	for _, tc := range []struct {
		name     string
		team     *bool
		tmpl     *bool
		platform bool // InternetOff
		req      *bool
		want     bool
		kind     capsules.Kind
	}{
		{"default on", nil, nil, false, nil, true, ""},
		{"team off", &off, nil, false, nil, false, ""},
		{"team on", &on, nil, false, nil, true, ""},
		{"template off", nil, &off, false, nil, false, ""},
		{"template on wins over team off", &off, &on, false, nil, true, ""},
		{"template off wins over team on", &on, &off, false, nil, false, ""},
		{"request wins over team off", &off, nil, false, &on, true, ""},
		{"request wins over template off", nil, &off, false, &on, true, ""},
		{"request off wins over team on", &on, nil, false, &off, false, ""},
		{"request off wins over template on", nil, &on, false, &off, false, ""},
		{"platform off caps the default", nil, nil, true, nil, false, ""},
		{"platform off caps the team", &on, nil, true, nil, false, ""},
		{"platform off caps the template", nil, &on, true, nil, false, ""},
		{"platform off refuses a request", nil, nil, true, &on, false, capsules.KindPermissionDenied},
		{"platform off, request off", nil, nil, true, &off, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testutil.Context(t, testutil.Short)
			if err := f.st.SetTeamCapsuleInternet(ctx, f.scope.TeamID, tc.team); err != nil {
				t.Fatal(err)
			}
			tpl, err := f.st.CreateTemplate(ctx, store.Template{TeamID: f.scope.TeamID, Name: "netdefault"})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.st.SetTemplateCapsuleInternet(ctx, f.scope.TeamID, tpl.ID, tc.tmpl); err != nil {
				t.Fatal(err)
			}
			cfg := f.cfg
			cfg.InternetOff = tc.platform
			svc := capsules.New(cfg)
			out, err := svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tpl.ID, AllowInternet: tc.req})
			if tc.kind != "" {
				if kindOf(err) != tc.kind || !strings.Contains(err.Error(), "--capsule-internet=off") {
					t.Fatalf("err = %v; want %s naming the switch", err, tc.kind)
				}
				if len(f.ag.created) != 0 {
					t.Fatal("the agent was asked anyway")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.Capsule.AllowInternet != tc.want || f.ag.created[0].GetAllowInternet() != tc.want {
				t.Fatalf("allow_internet stored %v, sent %v; want %v", out.Capsule.AllowInternet, f.ag.created[0].GetAllowInternet(), tc.want)
			}
		})
	}
}

// TestPrivateRangesSent: a team's allowed private ranges go to the agent
// with every create and live network update of its capsules (with
// internet on only: allow_internet false is no egress at all), and never
// with another team's.
func TestPrivateRangesSent(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	off := false
	if err := f.st.SetTeamPrivateRanges(ctx, f.scope.TeamID, []string{"10.111.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	if p := f.ag.created[0].GetNetwork().GetAllowPrivate(); len(p) != 1 || p[0] != "10.111.0.0/16" {
		t.Fatalf("create sent allow_private %v", p)
	}
	if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, AllowInternet: &off}); err != nil {
		t.Fatal(err)
	}
	if p := f.ag.created[1].GetNetwork().GetAllowPrivate(); len(p) != 0 {
		t.Fatalf("create without internet sent allow_private %v", p)
	}
	nw := &store.CapsuleNetwork{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"203.0.113.0/24"}}
	if _, err := f.svc.SetNetwork(ctx, f.scope, out.Capsule.ID, capsules.NetworkUpdate{Network: nw}); err != nil {
		t.Fatal(err)
	}
	u := f.ag.netUpdates[0].GetNetwork()
	if p := u.GetAllowPrivate(); len(p) != 1 || p[0] != "10.111.0.0/16" || len(u.GetAllowOut()) != 1 {
		t.Fatalf("update sent %v", u)
	}
	other, err := f.st.CreateTeam(ctx, store.Team{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	osc := capsules.TeamScope(other.ID, "", f.scope.Actor)
	if _, err := f.svc.Create(ctx, osc, capsules.CreateRequest{Template: &tmpl}); err != nil {
		t.Fatal(err)
	}
	if p := f.ag.created[2].GetNetwork(); p != nil {
		t.Fatalf("another team's capsule got %v", p)
	}
}

// TestCheckPrivateRanges: only parts of the private ranges can be allowed;
// public, loopback, link-local (metadata), multicast, IPv6 and malformed
// entries are invalid_argument naming the entry.
func TestCheckPrivateRanges(t *testing.T) {
	got, err := capsules.CheckPrivateRanges([]string{"10.111.0.0/16", "192.168.7.1", "10.111.5.0/16", "100.64.0.0/10"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "10.111.0.0/16,192.168.7.1/32,100.64.0.0/10" {
		t.Fatalf("got %v", got)
	}
	many := make([]string, capsules.MaxPrivateRanges+1)
	for i := range many {
		many[i] = "10.111.0.1"
	}
	for _, tc := range []struct {
		in  []string
		msg string
	}{
		{[]string{"8.8.8.0/24"}, `allowed_private_ranges[0] "8.8.8.0/24": not inside a private range`},
		{[]string{"10.111.0.0/16", "169.254.169.254"}, `allowed_private_ranges[1] "169.254.169.254"`},
		{[]string{"127.0.0.1"}, "not inside a private range"},
		{[]string{"0.0.0.0/0"}, "not inside a private range"},
		{[]string{"10.0.0.0/7"}, "not inside a private range"},
		{[]string{"224.0.0.1"}, "not inside a private range"},
		{[]string{"fd00::/8"}, "IPv4-only"},
		{[]string{"10.111.0.0/33"}, `allowed_private_ranges[0] "10.111.0.0/33"`},
		{[]string{"not-a-cidr"}, "allowed_private_ranges[0]"},
		{many, "at most"},
	} {
		_, err := capsules.CheckPrivateRanges(tc.in)
		if kindOf(err) != capsules.KindInvalid || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: err = %v; want invalid_argument containing %q", tc.in, err, tc.msg)
		}
	}
}

// TestCreateNetworkPolicy: a policy is validated, stored and sent to the
// agent; bad policies are invalid_argument naming the rule and reach
// neither the store nor the agent.
func TestCreateNetworkPolicy(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	nw := &store.CapsuleNetwork{AllowOut: []string{"pypi.org", "*.pythonhosted.org", "203.0.113.0/24"}, DenyOut: []string{"0.0.0.0/0"}, EgressMBps: 10}
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, Network: nw})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.svc.Get(ctx, f.scope, out.Capsule.ID)
	if err != nil || got.Network == nil || len(got.Network.AllowOut) != 3 || got.Network.EgressMBps != 10 {
		t.Fatalf("stored %+v, %v", got.Network, err)
	}
	if p := f.ag.created[0].GetNetwork(); len(p.GetAllowOut()) != 3 || p.GetDenyOut()[0] != "0.0.0.0/0" || p.GetEgressMbps() != 10 {
		t.Fatalf("agent got %v", p)
	}
	off := false
	many := make([]string, 1001)
	for i := range many {
		many[i] = "203.0.113.1"
	}
	for _, tc := range []struct {
		name string
		req  capsules.CreateRequest
		msg  string
	}{
		{"bad cidr", capsules.CreateRequest{Network: &store.CapsuleNetwork{DenyOut: []string{"10.0.0.0/33"}}}, `network.deny_out[0] "10.0.0.0/33"`},
		{"bad name", capsules.CreateRequest{Network: &store.CapsuleNetwork{AllowOut: []string{"exa mple.com"}, DenyOut: []string{"0.0.0.0/0"}}}, `network.allow_out[0] "exa mple.com"`},
		{"names without deny all", capsules.CreateRequest{Network: &store.CapsuleNetwork{AllowOut: []string{"example.com"}}}, "0.0.0.0/0"},
		{"too many", capsules.CreateRequest{Network: &store.CapsuleNetwork{DenyOut: many}}, "at most 1000"},
		{"ipv6", capsules.CreateRequest{Network: &store.CapsuleNetwork{DenyOut: []string{"2001:db8::/32"}}}, "IPv4"},
		{"negative rate", capsules.CreateRequest{Network: &store.CapsuleNetwork{EgressMBps: -1}}, "egress_mbps"},
		{"rules without internet", capsules.CreateRequest{AllowInternet: &off, Network: &store.CapsuleNetwork{DenyOut: []string{"203.0.113.0/24"}}}, "allow_internet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Template = &tmpl
			_, err := f.svc.Create(ctx, f.scope, tc.req)
			if kindOf(err) != capsules.KindInvalid || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v; want invalid_argument containing %q", err, tc.msg)
			}
		})
	}
	if len(f.ag.created) != 1 {
		t.Fatalf("agent saw %d creates, want 1", len(f.ag.created))
	}
	// Rate limits alone are fine without internet.
	if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, AllowInternet: &off, Network: &store.CapsuleNetwork{IngressMBps: 5}}); err != nil {
		t.Fatal(err)
	}
}

// TestSetNetwork: a live update goes to the agent and is recorded; a bad
// policy, another team's capsule, a refused agent and a capsule not
// running leave the stored policy as it was.
func TestSetNetwork(t *testing.T) {
	f := newFixture(t)
	na := f.ag
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, Network: &store.CapsuleNetwork{DenyOut: []string{"198.51.100.0/24"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := out.Capsule.ID
	nw := &store.CapsuleNetwork{AllowOut: []string{"*.example.com"}, DenyOut: []string{"0.0.0.0/0"}, BurstMB: 1}
	c, err := f.svc.SetNetwork(ctx, f.scope, id, capsules.NetworkUpdate{Network: nw})
	if err != nil {
		t.Fatal(err)
	}
	if !c.AllowInternet || c.Network == nil || c.Network.AllowOut[0] != "*.example.com" {
		t.Fatalf("answer %+v", c)
	}
	if len(na.netUpdates) != 1 || !na.netUpdates[0].GetAllowInternet() || na.netUpdates[0].GetNetwork().GetAllowOut()[0] != "*.example.com" || na.netUpdates[0].GetNetwork().GetBurstMb() != 1 {
		t.Fatalf("agent got %v", na.netUpdates)
	}
	stored := func() *store.CapsuleNetwork {
		got, err := f.svc.Get(ctx, f.scope, id)
		if err != nil {
			t.Fatal(err)
		}
		return got.Network
	}
	if s := stored(); s == nil || s.AllowOut[0] != "*.example.com" {
		t.Fatalf("stored %+v", s)
	}
	off, on := false, true
	for _, tc := range []struct {
		name string
		u    capsules.NetworkUpdate
		kind capsules.Kind
	}{
		{"bad rule", capsules.NetworkUpdate{Network: &store.CapsuleNetwork{AllowOut: []string{"a..b"}, DenyOut: []string{"0.0.0.0/0"}}}, capsules.KindInvalid},
		{"rules with internet off", capsules.NetworkUpdate{AllowInternet: &off, Network: nw}, capsules.KindInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.svc.SetNetwork(ctx, f.scope, id, tc.u); kindOf(err) != tc.kind {
				t.Fatalf("err = %v; want %s", err, tc.kind)
			}
			if s := stored(); s == nil || s.AllowOut[0] != "*.example.com" {
				t.Fatalf("policy changed to %+v", s)
			}
		})
	}
	// Another team's capsule is not found.
	other, err := f.st.CreateTeam(ctx, store.Team{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	osc := capsules.TeamScope(other.ID, "", f.scope.Actor)
	if _, err := f.svc.SetNetwork(ctx, osc, id, capsules.NetworkUpdate{}); kindOf(err) != capsules.KindNotFound {
		t.Fatalf("other team: %v", err)
	}
	// The agent refuses: the stored policy stays.
	na.netErr = connect.NewError(connect.CodeInvalidArgument, errString("network.allow_out: nope"))
	if _, err := f.svc.SetNetwork(ctx, f.scope, id, capsules.NetworkUpdate{}); kindOf(err) != capsules.KindInvalid {
		t.Fatalf("agent refusal: %v", err)
	}
	if s := stored(); s == nil || s.AllowOut[0] != "*.example.com" {
		t.Fatalf("policy changed to %+v", s)
	}
	na.netErr = nil
	// Internet off, then clear the policy.
	if c, err = f.svc.SetNetwork(ctx, f.scope, id, capsules.NetworkUpdate{AllowInternet: &off}); err != nil || c.AllowInternet || c.Network != nil {
		t.Fatalf("internet off: %+v, %v", c, err)
	}
	// Under --capsule-internet=off internet cannot be turned back on.
	cfg := f.cfg
	cfg.InternetOff = true
	if _, err := capsules.New(cfg).SetNetwork(ctx, f.scope, id, capsules.NetworkUpdate{AllowInternet: &on}); kindOf(err) != capsules.KindPermissionDenied {
		t.Fatalf("platform off: %v", err)
	}
	// A stopped capsule is a conflict.
	if _, err := f.st.UpdateCapsuleStatus(ctx, f.scope.TeamID, id, store.CapsuleRunning, store.CapsuleStopped); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.SetNetwork(ctx, f.scope, id, capsules.NetworkUpdate{}); kindOf(err) != capsules.KindConflict {
		t.Fatalf("stopped: %v", err)
	}
}
