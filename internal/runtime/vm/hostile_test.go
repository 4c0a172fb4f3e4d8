package vm_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
)

// TestHostile runs the hostile-tenant suite against microVMs (their own
// kernel: the shared-kernel syscall attempts are skipped; the network,
// disk, memory and fork-bomb attacks and the leak check run).
// The suite boots two microVMs; the fork bomb meets the guest's pids
// limit (guest/init: 2 tasks per MiB of memory), so it ends with its 8 s
// deadline.
func TestHostile(t *testing.T) {
	t0 := time.Now()
	defer func() { t.Logf("microVM hostile suite took %v", time.Since(t0).Round(time.Second)) }()
	runtimetest.RunHostile(t,
		func(t *testing.T) runtime.Driver { return newDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithHelper(helperBin),
		runtimetest.WithOwnKernel(),
		runtimetest.WithHostState(vmHostState),
	)
}

// vmHostState lists what a microVM test driver could leak: its
// namespaces, RAM and socket directories and QEMU processes.
func vmHostState() (string, error) {
	var lines []string
	ns, _ := os.ReadDir("/run/netns")
	for _, e := range ns {
		if strings.HasPrefix(e.Name(), "wv") {
			lines = append(lines, "netns "+e.Name())
		}
	}
	for _, dir := range []string{"/dev/shm", "/run"} {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if strings.HasPrefix(e.Name(), "wv") {
				lines = append(lines, dir+"/"+e.Name())
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), "-name\x00wrenn-") && strings.Contains(string(b), "/run/wv") {
			lines = append(lines, "qemu "+p.Name())
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}
