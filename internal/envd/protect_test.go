package envd_test

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd"
)

// Protect makes the process non-dumpable (no ptrace, no /proc/<pid>/mem
// for capsule processes); the processes it starts are dumpable again after
// their exec (strace of the user's own processes works). Checked in child
// processes so this test process stays as it is.
func TestProtect(t *testing.T) {
	dumpable := func() int {
		v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	self := func(mode string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProtect$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WRENN_TEST_PROTECT="+mode)
		return cmd
	}
	switch os.Getenv("WRENN_TEST_PROTECT") {
	case "protected":
		if err := envd.Protect(); err != nil {
			t.Fatal(err)
		}
		if v := dumpable(); v != 0 {
			t.Fatalf("dumpable = %d after Protect, want 0", v)
		}
		if out, err := self("started").CombinedOutput(); err != nil {
			t.Fatalf("a process started by a protected one: %v: %s", err, out)
		}
		return
	case "started":
		if v := dumpable(); v != 1 {
			t.Fatalf("a process started by a protected one has dumpable = %d, want 1", v)
		}
		return
	}
	if out, err := self("protected").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}
