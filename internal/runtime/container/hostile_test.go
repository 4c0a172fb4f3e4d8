package container_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestHostile runs the hostile-tenant suite against the container driver.
func TestHostile(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	runtimetest.RunHostile(t,
		func(t *testing.T) runtime.Driver { return newDriver(t) },
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithHelper(helperBin),
		runtimetest.WithHostState(hostState),
	)
}

// hostState describes the host objects of this test process's drivers a
// capsule could leave behind: mounts and loop devices under the suite's
// temp dirs, network namespaces, nft tables and cgroups named with this
// process's test tag (testConfig), and processes in those cgroups or
// naming those dirs. Objects of other tests on the machine are ignored.
func hostState() (string, error) {
	tag := fmt.Sprintf("wt%d-", os.Getpid()%100000)
	dirs := filepath.Join(os.TempDir(), "TestHostile")
	var b strings.Builder
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	var mounts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (strings.HasPrefix(f[4], dirs) || strings.HasPrefix(f[4], "/run/netns/"+tag)) {
			mounts = append(mounts, f[4])
		}
	}
	for _, m := range mounts {
		fmt.Fprintf(&b, "mount %s\n", m)
	}
	ns, _ := filepath.Glob("/run/netns/" + tag + "*")
	for _, n := range ns {
		fmt.Fprintf(&b, "netns %s\n", n)
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	n := 0
	for _, l := range loops {
		if bf, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(bf), dirs) {
			n++
		}
	}
	for range n {
		fmt.Fprintf(&b, "loop device\n")
	}
	nft, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return "", fmt.Errorf("nft list tables: %w", err)
	}
	var tables []string
	for _, line := range strings.Split(string(nft), "\n") {
		if strings.Contains(line, tag) {
			tables = append(tables, line)
		}
	}
	for _, tb := range tables {
		fmt.Fprintf(&b, "nft %s\n", tb)
	}
	var cgroups []string
	_ = filepath.WalkDir("/sys/fs/cgroup", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Contains(path, "/"+tag) {
			cgroups = append(cgroups, path)
		}
		if strings.Count(path, "/") > 6 {
			return filepath.SkipDir
		}
		return nil
	})
	slices.Sort(cgroups)
	for _, c := range cgroups {
		fmt.Fprintf(&b, "cgroup %s\n", c)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var ours []string
	for _, p := range procs {
		cg, _ := os.ReadFile(filepath.Join(p, "cgroup"))
		cmd, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		if strings.Contains(string(cg), "/"+tag) || strings.Contains(string(cmd), dirs) {
			comm, _ := os.ReadFile(filepath.Join(p, "comm"))
			ours = append(ours, strings.TrimSpace(string(comm)))
		}
	}
	slices.Sort(ours)
	for _, p := range ours {
		fmt.Fprintf(&b, "process %s\n", p)
	}
	return b.String(), nil
}
