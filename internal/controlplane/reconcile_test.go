package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestHostLivenessAndReconcile: a host registers and heartbeats through
// hostlink; when it falls silent the reconciler marks it unavailable and
// its live capsules missing; a new heartbeat brings it back.
func TestHostLivenessAndReconcile(t *testing.T) {
	for _, o := range apitest.Stores() {
		t.Run(o.Name, func(t *testing.T) {
			st := o.Open(t)
			c := startCP(t, st, func(cfg *controlplane.Config) {
				cfg.HeartbeatInterval = 250 * time.Millisecond
				cfg.HeartbeatMisses = 2
			})
			ctx := context.Background()
			adminTok, adminID, _ := c.signup("admin@example.com")
			if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
				t.Fatal(err)
			}
			tok := c.call("POST", "/v1/admin/hosts/tokens", adminTok, map[string]any{}, 201).obj(t)["token"].(string)
			hl := &hostlink.Client{BaseURL: c.url}
			// An address nothing listens on: the agent itself is not needed here.
			reg, err := hl.Register(ctx, tok, hostlink.Usage{Address: "127.0.0.1:9", VCPUs: 4, MemoryMB: 4096, DiskMB: 10000})
			if err != nil {
				t.Fatal(err)
			}
			if reg.Credential != c.srv.HostCredential(reg.HostID) {
				t.Fatal("registration credential differs from the one the control plane derives")
			}
			if _, err := hl.Register(ctx, tok, hostlink.Usage{Address: "127.0.0.1:9"}); err == nil {
				t.Fatal("a registration token worked twice")
			}
			next, err := hl.Heartbeat(ctx, reg.HostID, reg.Credential, hostlink.Usage{VCPUs: 4, MemoryMB: 4096, UsedMemoryMB: 100})
			if err != nil || next != 0 && next > time.Second {
				t.Fatalf("heartbeat: %v, next %v", err, next)
			}
			_, _, team := c.signup("user@example.com")
			mk := func(status store.CapsuleStatus) store.Capsule {
				cp, err := st.CreateCapsule(ctx, store.Capsule{
					ID: store.NewID(store.PrefixCapsule), TeamID: team, TemplateID: "tpl-base", HostID: reg.HostID,
					Status: status, VCPUs: 1, MemoryMB: 128, DiskSizeMB: 512, TimeoutSec: 60, AccessTokenHash: auth.HashToken("x"),
				})
				if err != nil {
					t.Fatal(err)
				}
				return cp
			}
			running, paused, hibernated := mk(store.CapsuleRunning), mk(store.CapsulePaused), mk(store.CapsuleHibernated)

			// While heartbeats flow, the host stays online.
			if _, err := hl.Heartbeat(ctx, reg.HostID, reg.Credential, hostlink.Usage{VCPUs: 4, MemoryMB: 4096}); err != nil {
				t.Fatal(err)
			}
			if err := c.srv.ReconcileOnce(ctx); err == nil {
				t.Fatal("reconcile against an unreachable agent reported no error")
			}
			if h, _ := st.GetHost(ctx, reg.HostID); h.Status != store.HostOnline {
				t.Fatalf("host %s right after a heartbeat", h.Status)
			}
			time.Sleep(700 * time.Millisecond)
			_ = c.srv.ReconcileOnce(ctx)
			if h, _ := st.GetHost(ctx, reg.HostID); h.Status != store.HostUnavailable {
				t.Fatalf("silent host is %s, want unavailable", h.Status)
			}
			for id, want := range map[string]store.CapsuleStatus{
				running.ID: store.CapsuleMissing, paused.ID: store.CapsuleMissing, hibernated.ID: store.CapsuleHibernated,
			} {
				got, err := st.GetCapsule(ctx, team, id)
				if err != nil || got.Status != want {
					t.Errorf("capsule %s: %s, %v; want %s", id, got.Status, err, want)
				}
			}
			if _, err := hl.Heartbeat(ctx, reg.HostID, reg.Credential, hostlink.Usage{VCPUs: 4, MemoryMB: 4096}); err != nil {
				t.Fatal(err)
			}
			if h, _ := st.GetHost(ctx, reg.HostID); h.Status != store.HostOnline {
				t.Fatalf("host after a new heartbeat: %s", h.Status)
			}
			// The platform team's event log (a shared host) says so.
			evs, err := st.ListEvents(ctx, store.PlatformTeamID, store.EventFilter{Subject: reg.HostID})
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, e := range evs {
				types = append(types, e.Type)
			}
			if want := "[host.up host.down host.up]"; fmt.Sprint(types) != want {
				t.Fatalf("host events %v, want %s", types, want)
			}
		})
	}
}
