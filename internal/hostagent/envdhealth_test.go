package hostagent_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// A running capsule whose envd stops answering (stopped, as a ptrace
// attach would leave it, or starved) is listed as ERROR with a reason,
// and as RUNNING again once envd answers.
func TestEnvdUnresponsiveIsError(t *testing.T) {
	h := startHost(t, newDirs(t), func(c *hostagent.Config) { c.EnvdUnresponsiveAfter = 5 })
	ctx := testutil.Context(t, testutil.Long)
	capsule := create(t, h.client, &pb.CreateCapsuleRequest{TimeoutSec: 600})
	id := capsule.GetCapsuleId()
	info, err := h.driver.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	state := func() (*pb.Capsule, bool) {
		res, err := h.client.ListCapsules(ctx, connect.NewRequest(&pb.ListCapsulesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range res.Msg.GetCapsules() {
			if c.GetCapsuleId() == id {
				return c, true
			}
		}
		return nil, false
	}
	// Healthy for a while: no false alarm.
	time.Sleep(time.Second)
	if c, _ := state(); c.GetState() != pb.CapsuleState_CAPSULE_STATE_RUNNING || c.GetErrorReason() != "" {
		t.Fatalf("healthy capsule listed as %v (%q)", c.GetState(), c.GetErrorReason())
	}
	if err := syscall.Kill(info.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGCONT) })
	testutil.Eventually(t, testutil.Long, func() bool {
		c, _ := state()
		return c.GetState() == pb.CapsuleState_CAPSULE_STATE_ERROR && strings.Contains(c.GetErrorReason(), "envd unresponsive")
	}, "the capsule with a stopped envd is listed as ERROR with a reason")
	g, err := h.client.GetCapsule(ctx, connect.NewRequest(&pb.GetCapsuleRequest{CapsuleId: id}))
	if err != nil || g.Msg.GetCapsule().GetState() != pb.CapsuleState_CAPSULE_STATE_ERROR {
		t.Errorf("GetCapsule: %v %v", err, g)
	}
	if err := syscall.Kill(info.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Long, func() bool {
		c, _ := state()
		return c.GetState() == pb.CapsuleState_CAPSULE_STATE_RUNNING && c.GetErrorReason() == ""
	}, "the capsule is RUNNING again once envd answers")
}
