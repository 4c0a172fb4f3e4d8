package container

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunBoundedReturnsAfterGrace: a process that does not go away when
// the context ends (here its Cancel does not kill it, as with a process
// stuck in the kernel) does not hold the caller past the grace period,
// and the error names its state.
func TestRunBoundedReturnsAfterGrace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return nil } // "killed" but still there
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	began := time.Now()
	err := runBounded(ctx, cmd, 200*time.Millisecond)
	took := time.Since(began)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("runBounded = %v, want a deadline error", err)
	}
	if took > 5*time.Second {
		t.Errorf("runBounded returned after %v, want about 300ms", took)
	}
	if !strings.Contains(err.Error(), "state S") || !strings.Contains(err.Error(), "sleep") {
		t.Errorf("error %q does not describe the sleeping process", err)
	}
}

// TestRunBoundedKills: the normal path, Cancel kills the group and the
// exit status comes back.
func TestRunBoundedKills(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", "sleep 30 & sleep 30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := runBounded(ctx, cmd, 10*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("runBounded = %v, want killed", err)
	}
	// Killed processes may still be on their way out for a moment.
	var s string
	for range 200 {
		if s = processGroupState(cmd.Process.Pid); s == "no process left in the group" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("after the kill: %s", s)
}

func TestRunBoundedSuccess(t *testing.T) {
	if err := runBounded(context.Background(), exec.Command("true"), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := runBounded(context.Background(), exec.Command("false"), time.Second); err == nil {
		t.Fatal("false succeeded")
	}
}

// TestKillTreeReachesNewSessions: a descendant that started its own
// session (as criu does) is killed with the tree, not orphaned.
func TestKillTreeReachesNewSessions(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A duration no other process uses, to find the child by.
	arg := "37." + strconv.Itoa(os.Getpid())
	cmd := exec.CommandContext(ctx, "sh", "-c", "setsid sleep "+arg+" & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killTree(cmd.Process.Pid) }
	done := make(chan error, 1)
	go func() { done <- runBounded(ctx, cmd, 10*time.Second) }()
	var child int
	for range 500 {
		if child = findProcess("sleep\x00" + arg + "\x00"); child != 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the setsid child did not appear")
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if g, err := syscall.Getpgid(child); err != nil || g != child {
		t.Fatalf("child %d leads group %d (%v), want its own: the test proves nothing", child, g, err)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("runBounded succeeded after cancel")
	}
	for range 200 {
		if parentPID(child) == 0 || isZombie(child) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("the child in its own session (pid %d) survived the kill", child)
}

// findProcess returns a process whose command line is cmdline (0 if none).
func findProcess(cmdline string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && string(b) == cmdline {
			return p
		}
	}
	return 0
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func TestRestoreBudget(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want time.Duration
	}{
		{0, time.Minute},
		{2 << 20, time.Minute},
		{8 << 30, time.Minute + 163*time.Second},
	} {
		if got := restoreBudget(tc.size); got != tc.want {
			t.Errorf("restoreBudget(%d) = %v, want %v", tc.size, got, tc.want)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/a", make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir+"/sub", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/sub/b", make([]byte, 24), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := imagesSize(dir); got != 1024 {
		t.Errorf("imagesSize = %d, want 1024", got)
	}
}
