package controlplane_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// BenchmarkCreateDelete measures create+delete of a capsule through the
// API with a real agent and container driver, on both stores. The in-run
// baseline is the same create+destroy made directly on the agent's RPC;
// api_vs_agent is the ratio of the two rates (the control plane's cost).
func BenchmarkCreateDelete(b *testing.B) {
	testutil.RequireRoot(b)
	for _, o := range apitest.Stores() {
		b.Run(o.Name, func(b *testing.B) {
			st := o.Open(b)
			c := startCP(b, st, nil)
			ctx := context.Background()
			adminTok, adminID, _ := c.signup("bench-admin@example.com")
			if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
				b.Fatal(err)
			}
			startAgent(b, c, adminTok)
			userTok, _, _ := c.signup("bench-user@example.com")
			hosts, err := st.ListHosts(ctx)
			if err != nil || len(hosts) != 1 {
				b.Fatalf("hosts: %v %v", hosts, err)
			}
			agent := c.srv.Agent(hosts[0])

			const baseRounds = 5
			start := time.Now()
			for range baseRounds {
				id := store.NewID(store.PrefixCapsule)
				if _, err := agent.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: id, Template: "minimal", Vcpus: 1, MemoryMb: 128, DiskSizeMb: 512, TimeoutSec: 300})); err != nil {
					b.Fatal(err)
				}
				if _, err := agent.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
					b.Fatal(err)
				}
			}
			agentRate := baseRounds / time.Since(start).Seconds()

			body := map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}
			b.ResetTimer()
			for b.Loop() {
				id := c.call("POST", "/v1/capsules", userTok, body, 201).obj(b)["id"].(string)
				c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
			}
			apiRate := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(apiRate, "create+delete/s")
			b.ReportMetric(agentRate, "agent_create+destroy/s")
			b.ReportMetric(apiRate/agentRate, "api_vs_agent")
		})
	}
}
