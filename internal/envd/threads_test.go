package envd

import (
	"os"
	"testing"
)

func threads(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestReserveThreadsKeepsIdleThreads: the threads ReserveThreads starts
// are still there afterwards (idle, for the runtime to reuse), so envd
// needs no new thread when a capsule's process limit is reached.
func TestReserveThreadsKeepsIdleThreads(t *testing.T) {
	before := threads(t)
	ReserveThreads(16)
	after := threads(t)
	// Threads the runtime already had idle may serve some of the 16.
	if after < 16+1 {
		t.Fatalf("threads: %d before, %d after reserving 16", before, after)
	}
	ReserveThreads(16) // the same threads again: none is lost, few are added
	if again := threads(t); again < after || again > after+2 {
		t.Fatalf("threads: %d after a first reserve, %d after a second", after, again)
	}
}
