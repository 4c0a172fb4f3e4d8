package capsules_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestResolveIsolationPrecedence: the create's isolation wins, then the
// template's, then the team's, then the platform's, then container; an
// unknown name in the create is invalid.
func TestResolveIsolationPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		req, tmpl, team, platform string
		want                      string
		wantInvalid               bool
	}{
		{name: "nothing set", want: "container"},
		{name: "platform", platform: "gvisor", want: "gvisor"},
		{name: "team over platform", team: "microvm", platform: "gvisor", want: "microvm"},
		{name: "template over team", tmpl: "gvisor", team: "microvm", platform: "container", want: "gvisor"},
		{name: "create over template", req: "container", tmpl: "gvisor", team: "microvm", platform: "microvm", want: "container"},
		{name: "create only", req: "microvm", want: "microvm"},
		{name: "template only", tmpl: "microvm", want: "microvm"},
		{name: "unknown create", req: "kvm", tmpl: "gvisor", wantInvalid: true},
		{name: "case matters", req: "gVisor", wantInvalid: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := capsules.ResolveIsolation(tc.req, store.Template{Isolation: tc.tmpl}, store.Team{DefaultIsolation: tc.team}, tc.platform)
			var se *capsules.Error
			if tc.wantInvalid {
				if !errors.As(err, &se) || se.Kind != capsules.KindInvalid || !strings.Contains(se.Message, "container, gvisor, microvm") {
					t.Fatalf("err = %v, want invalid_argument naming the isolations", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestCreateChoosesIsolation: the create's isolation (or the template's,
// or the team's) is stored on the capsule and sent to the agent; one the
// host does not run is isolation_unavailable naming the host's reason,
// before any row or agent call; an unknown one is invalid.
func TestCreateChoosesIsolation(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	hosts, err := f.st.ListHosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("hosts %v, %v", hosts, err)
	}
	caps, _ := json.Marshal(hostlink.Capabilities{IsolationSupport: []hostlink.IsolationSupport{
		{Name: "container", Available: true},
		{Name: "gvisor", Available: true},
		{Name: "microvm", Reason: "the microVM driver is not enabled (--microvm)"},
	}})
	if err := f.st.SetHostCapabilities(ctx, hosts[0].ID, store.HostUsage{Capabilities: string(caps)}); err != nil {
		t.Fatal(err)
	}
	tmpl := "minimal"
	create := func(iso string) (store.Capsule, error) {
		out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, Isolation: iso})
		return out.Capsule, err
	}
	lastSent := func() string { return f.ag.created[len(f.ag.created)-1].GetIsolation() }

	c, err := create("")
	if err != nil || c.Isolation != "container" || lastSent() != "container" {
		t.Fatalf("default: capsule %q sent %q, %v", c.Isolation, lastSent(), err)
	}
	if c, err = create("gvisor"); err != nil || c.Isolation != "gvisor" || lastSent() != "gvisor" {
		t.Fatalf("gvisor: capsule %q sent %q, %v", c.Isolation, lastSent(), err)
	}
	got, err := f.st.GetCapsule(ctx, f.scope.TeamID, c.ID)
	if err != nil || got.Isolation != "gvisor" {
		t.Fatalf("stored isolation %q, %v", got.Isolation, err)
	}
	// The team's default, then a template's over it.
	if err := f.st.SetTeamDefaultIsolation(ctx, f.scope.TeamID, "gvisor"); err != nil {
		t.Fatal(err)
	}
	if c, err = create(""); err != nil || c.Isolation != "gvisor" {
		t.Fatalf("team default: %q, %v", c.Isolation, err)
	}
	own, err := f.st.CreateTemplate(ctx, store.Template{TeamID: f.scope.TeamID, Name: "own"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.SetTemplateIsolation(ctx, f.scope.TeamID, own.ID, "container"); err != nil {
		t.Fatal(err)
	}
	ownName := "own"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &ownName})
	if err != nil || out.Capsule.Isolation != "container" || lastSent() != "container" {
		t.Fatalf("template default over team: %q sent %q, %v", out.Capsule.Isolation, lastSent(), err)
	}

	sent := len(f.ag.created)
	list, _, err := f.svc.List(ctx, f.scope, capsules.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = create("microvm")
	var se *capsules.Error
	if !errors.As(err, &se) || se.Kind != capsules.KindIsolationUnavailable || !strings.Contains(se.Message, "--microvm") || !strings.Contains(se.Message, "available: container, gvisor") {
		t.Fatalf("microvm: err = %v, want isolation_unavailable naming the reason", err)
	}
	if _, err = create("firecracker"); !errors.As(err, &se) || se.Kind != capsules.KindInvalid {
		t.Fatalf("unknown isolation: err = %v, want invalid", err)
	}
	after, _, err := f.svc.List(ctx, f.scope, capsules.ListFilter{})
	if err != nil || len(after) != len(list) || len(f.ag.created) != sent {
		t.Fatalf("refused creates left rows (%d → %d) or reached the agent (%d → %d)", len(list), len(after), sent, len(f.ag.created))
	}
	if len(f.pl.held) != len(list) {
		t.Fatalf("placements held %d, want %d", len(f.pl.held), len(list))
	}
}
