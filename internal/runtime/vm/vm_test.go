package vm_test

import (
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestBoot boots one microVM and runs a command in it through envd.
func TestBoot(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-boot"})
	out, err := exec1(ctx, d, "cl-boot", "sh", "-c", "hostname; uname -r; cat /proc/cmdline")
	if err != nil {
		t.Fatalf("exec: %v: %s", err, out)
	}
	t.Logf("guest: %s", out)
	if !strings.HasPrefix(out, "cl-boot\n") {
		t.Errorf("hostname: %q", out)
	}
}
