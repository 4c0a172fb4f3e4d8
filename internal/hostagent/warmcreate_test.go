package hostagent_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// TestWarmCreateInits: a create served by the warm pool sends envd's
// /init while the take's last steps run (runtime.WithThawed); the capsule
// still gets its identity, environment, user-facing token and network
// like a cold one, and its first exec works on the connection the agent
// opened for it.
func TestWarmCreateInits(t *testing.T) {
	h := startHost(t, newDirs(t), func(c *hostagent.Config) { c.WarmPools = map[string]int{tmplName: 1} })
	ctx := testutil.Context(t, testutil.Long)
	for round := range 2 {
		deadline := time.Now().Add(testutil.Long)
		for h.driver.WarmPoolSize(tmplName) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		id := newID()
		res, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
			CapsuleId: id, Env: map[string]string{"GREETING": "warm hi"}, TimeoutSec: 600,
		}))
		if err != nil {
			t.Fatalf("round %d: CreateCapsule: %v", round, err)
		}
		if !res.Msg.GetWarmPool() {
			t.Fatalf("round %d: the create missed the warm pool", round)
		}
		got := execOK(t, h.client, id, "/bin/sh", "-c", "echo $GREETING; cat /run/wrenn/.WRENN_CAPSULE_ID; echo; hostname")
		if want := "warm hi\n" + id + "\n" + id + "\n"; got != want {
			t.Errorf("round %d: env/identity inside: got %q, want %q", round, got, want)
		}
		if _, err := h.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
			t.Fatal(err)
		}
	}
}
