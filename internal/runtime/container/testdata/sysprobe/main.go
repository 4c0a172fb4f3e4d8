// Command sysprobe runs inside a capsule for the container driver's
// seccomp tests (built statically by the tests, copied into the capsule).
//
//	sysprobe deny     try each dangerous call with harmless arguments and
//	                  print "name errno" (errno "ok" if the call succeeded)
//	sysprobe ptrace   start a child under PTRACE_TRACEME, continue it, and
//	                  read its memory with process_vm_readv: "ptrace ok"
//	sysprobe threads  run 64 goroutines over several OS threads: "threads ok"
//	sysprobe noop     exit 0
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	runtime.LockOSThread()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sysprobe deny|ptrace|threads|noop")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "deny":
		// The probes use harmless arguments, but they are still calls no
		// host process should make: refuse outside a capsule.
		if comm, _ := os.ReadFile("/proc/1/comm"); string(comm) != "envd\n" {
			fmt.Fprintln(os.Stderr, "sysprobe deny runs only inside a capsule (PID 1 is not envd)")
			os.Exit(3)
		}
		deny()
	case "ptrace":
		if err := traceChild(); err != nil {
			fmt.Println("ptrace failed:", err)
			os.Exit(1)
		}
		fmt.Println("ptrace ok")
	case "threads":
		threads()
	case "noop":
	default:
		os.Exit(2)
	}
}

func errnoName(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

func raw(nr uintptr, a ...uintptr) error {
	var args [6]uintptr
	copy(args[:], a)
	_, _, e := unix.Syscall6(nr, args[0], args[1], args[2], args[3], args[4], args[5])
	if e != 0 {
		return e
	}
	return nil
}

func str(s string) uintptr {
	p, _ := unix.BytePtrFromString(s)
	return uintptr(unsafe.Pointer(p))
}

func deny() {
	buf := make([]byte, 256)
	bp := uintptr(unsafe.Pointer(&buf[0]))
	probes := []struct {
		name string
		call func() error
	}{
		{"mount", func() error { return unix.Mount("none", "/wrenn-nonexistent", "tmpfs", 0, "") }},
		{"umount2", func() error { return unix.Unmount("/wrenn-nonexistent", unix.MNT_DETACH) }},
		{"pivot_root", func() error { return unix.PivotRoot("/wrenn-nonexistent", "/wrenn-nonexistent") }},
		{"init_module", func() error { return raw(unix.SYS_INIT_MODULE, 0, 0, str("")) }},
		{"finit_module", func() error { return raw(unix.SYS_FINIT_MODULE, ^uintptr(0), str(""), 0) }},
		{"delete_module", func() error { return raw(unix.SYS_DELETE_MODULE, str("wrenn_nonexistent"), 0) }},
		{"kexec_load", func() error { return raw(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0xffff0000) }},
		{"kexec_file_load", func() error { return raw(unix.SYS_KEXEC_FILE_LOAD, ^uintptr(0), ^uintptr(0), 0, str(""), 0) }},
		{"bpf", func() error { return raw(unix.SYS_BPF, 0, 0, 0) }},
		{"perf_event_open", func() error { return raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0) }},
		{"keyctl", func() error { return raw(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd), 0) }},
		{"add_key", func() error { return raw(unix.SYS_ADD_KEY, str("user"), str("wrenn"), bp, 1, uintptr(0xfffffffe)) }},
		{"request_key", func() error { return raw(unix.SYS_REQUEST_KEY, str("user"), str("wrenn"), 0, 0) }},
		{"unshare-user", func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
		{"unshare-mount", func() error { return unix.Unshare(unix.CLONE_NEWNS) }},
		{"unshare-net", func() error { return unix.Unshare(unix.CLONE_NEWNET) }},
		{"setns", func() error { return raw(unix.SYS_SETNS, ^uintptr(0), 0) }},
		{"clone-newuser", func() error {
			cmd := exec.Command("/proc/self/exe", "noop")
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER}
			return cmd.Run()
		}},
		{"clone3", func() error { return raw(unix.SYS_CLONE3, 0, 0) }},
		{"open_by_handle_at", func() error { return raw(unix.SYS_OPEN_BY_HANDLE_AT, ^uintptr(0), bp, 0) }},
		{"name_to_handle_at", func() error { return raw(unix.SYS_NAME_TO_HANDLE_AT, ^uintptr(99), str("/"), bp, bp, 0) }},
		{"userfaultfd", func() error { return raw(unix.SYS_USERFAULTFD, 0) }},
		{"reboot", func() error { return raw(unix.SYS_REBOOT, 0, 0, 0, 0) }},
		{"swapon", func() error { return raw(unix.SYS_SWAPON, str("/nonexistent"), 0) }},
		{"acct", func() error { return raw(unix.SYS_ACCT, str("/wrenn-nonexistent")) }},
		{"io_uring_setup", func() error { return raw(unix.SYS_IO_URING_SETUP, 1, 0) }},
		{"fsopen", func() error { return raw(unix.SYS_FSOPEN, str("tmpfs"), 0) }},
		{"open_tree", func() error { return raw(unix.SYS_OPEN_TREE, ^uintptr(99), str("/"), 0) }},
		{"kcmp", func() error { return raw(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), 0, 0, 0) }},
		{"pidfd_getfd", func() error { return raw(unix.SYS_PIDFD_GETFD, ^uintptr(0), 0, 0) }},
		{"syslog", func() error { return raw(unix.SYS_SYSLOG, 10, 0, 0) }},
		{"settimeofday", func() error { return raw(unix.SYS_SETTIMEOFDAY, 0, 0) }},
		{"personality-exec", func() error { return raw(unix.SYS_PERSONALITY, 0x0400000) }},
		{"modify_ldt", func() error { return modifyLDT(bp) }},
	}
	for _, p := range probes {
		fmt.Println(p.name, errnoName(p.call()))
	}
}

func threads() {
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			mu.Lock()
			n++
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Printf("threads ok %d\n", n)
}

// traceChild is what strace -f and gdb do to a child of their own.
func traceChild() error {
	cmd := exec.Command("/proc/self/exe", "noop")
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start traced child: %w", err)
	}
	pid := cmd.Process.Pid
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || !ws.Stopped() {
		return fmt.Errorf("child did not stop at exec: %v %v", err, ws)
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return fmt.Errorf("PTRACE_GETREGS: %w", err)
	}
	local := make([]byte, 8)
	if _, err := unix.PtracePeekData(pid, uintptr(regs.PC()), local); err != nil {
		return fmt.Errorf("PTRACE_PEEKDATA: %w", err)
	}
	viaVM := make([]byte, 8)
	if _, err := unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &viaVM[0], Len: 8}},
		[]unix.RemoteIovec{{Base: uintptr(regs.PC()), Len: 8}}, 0); err != nil {
		return fmt.Errorf("process_vm_readv: %w", err)
	}
	if string(local) != string(viaVM) {
		return fmt.Errorf("PEEKDATA %x != process_vm_readv %x", local, viaVM)
	}
	if err := unix.PtraceCont(pid, 0); err != nil {
		return fmt.Errorf("PTRACE_CONT: %w", err)
	}
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Errorf("traced child: %v %v", err, ws)
	}
	return nil
}
