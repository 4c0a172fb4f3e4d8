package vm

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFirecrackerProcesses: the driver's recovery finds this backend's
// Firecracker processes by their command line (api.sock, --id) and their
// working directory, and remove kills one and deletes its directory;
// a process with the same arguments elsewhere is not touched.
func TestFirecrackerProcesses(t *testing.T) {
	run := t.TempDir()
	f := &Firecracker{RunDir: run, Log: slog.New(slog.DiscardHandler)}
	start := func(dir, id string) *exec.Cmd {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// A shell blocked in the builtin read: it never forks (a forked
		// child would carry the same command line and directory).
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Close() })
		cmd := exec.Command("/bin/sh", "-c", "read x", "--api-sock", "api.sock", "--id", id)
		cmd.Dir, cmd.Stdin = dir, r
		defer r.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	ours := start(filepath.Join(run, "fcA"), "fcA")
	other := start(t.TempDir(), "fcA") // same arguments, another directory
	var found []vmProc
	for range 50 { // the shell's cwd is set once it runs
		if found = f.processes(); len(found) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(found) != 1 || found[0].pid != ours.Process.Pid || found[0].key != "fcA" {
		t.Fatalf("processes() = %+v, want only pid %d", found, ours.Process.Pid)
	}
	done := make(chan error, 1)
	go func() { done <- ours.Wait() }()
	if err := f.remove("fcA"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("remove did not kill the VM process")
	}
	if _, err := os.Stat(filepath.Join(run, "fcA")); !os.IsNotExist(err) {
		t.Fatalf("VM directory left: %v", err)
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Fatalf("a process of another directory was killed: %v", err)
	}
}
