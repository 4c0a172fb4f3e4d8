package container

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestStreamDumpDecision: with Config.CRIUPageServer "" a pause streams
// its pages when the dump cannot go to the scratch tmpfs or the capsule
// uses streamAbove or more, and dumps to files otherwise (a cgroup v2
// layout in a temporary directory stands for /sys/fs/cgroup).
func TestStreamDumpDecision(t *testing.T) {
	root := t.TempDir()
	cgPath := "wrenn/cl-x"
	if err := os.MkdirAll(filepath.Join(root, cgPath), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"cpu.stat": "usage_usec 1\n", "memory.max": "max\n", "pids.current": "1\n"} {
		if err := os.WriteFile(filepath.Join(root, cgPath, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	use := func(n int64) {
		if err := os.WriteFile(filepath.Join(root, cgPath, "memory.current"), []byte(strconv.FormatInt(n, 10)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := &Driver{cg: cgroups{root: root, v2: true}, scratch: "/dev/shm/wrenn-criu-test"}
	onScratch := "/dev/shm/wrenn-criu-test/key"
	use(256 << 20)
	if d.streamDump(cgPath, onScratch) {
		t.Error("a 256 MiB capsule dumping to the scratch tmpfs streams")
	}
	if !d.streamDump(cgPath, "/var/lib/wrenn/capsules/key/criu-images") {
		t.Error("a dump into the capsule's directory (no room on the tmpfs) does not stream")
	}
	use(streamAbove)
	if !d.streamDump(cgPath, onScratch) {
		t.Error("a capsule using streamAbove does not stream")
	}
	d.scratch = ""
	use(1 << 20)
	if !d.streamDump(cgPath, "/var/lib/wrenn/capsules/key/criu-images") {
		t.Error("without a scratch tmpfs a pause does not stream")
	}
}
