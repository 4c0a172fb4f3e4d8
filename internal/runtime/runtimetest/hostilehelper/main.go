// Command hostilehelper is copied into capsules by the hostile-tenant suite
// (runtimetest.RunHostile) to make the system calls a busybox shell cannot.
// Each attempt prints one line: "DENIED <errno name>" if the kernel refused
// it, "ALLOWED" if it succeeded (an escape the suite reports), or
// "ERROR <text>" if the attempt could not be made at all.
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	goruntime "runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("ERROR usage: hostilehelper ATTEMPT [ARGS]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "ptrace-init":
		report(ptraceAttach(1))
	case "read-init-mem":
		report(readFile("/proc/1/mem", 4096))
	case "read-init-environ":
		report(readFile("/proc/1/environ", 4096))
	case "vm-read-init":
		report(vmRead(1))
	case "ptrace-child":
		ptraceChild()
	case "mount":
		report(unix.Mount("tmpfs", "/mnt", "tmpfs", 0, ""))
	case "write-proc-sys":
		report(os.WriteFile("/proc/sys/kernel/hostname", []byte("escaped"), 0))
	case "raw-socket":
		report(socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP))
	case "packet-socket":
		report(socket(unix.AF_PACKET, unix.SOCK_RAW, 0))
	case "unshare-user":
		report(unshare(unix.CLONE_NEWUSER))
	case "unshare-mount":
		report(unshare(unix.CLONE_NEWNS))
	case "unshare-net":
		report(unshare(unix.CLONE_NEWNET))
	case "init-module":
		report(initModule())
	case "finit-module":
		report(finitModule())
	case "bpf":
		report(bpfMapCreate())
	case "perf-event-open":
		report(perfEventOpen())
	case "keyctl":
		_, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_SESSION_KEYRING, true)
		report(err)
	case "add-key":
		_, err := unix.AddKey("user", "wrenn-hostile", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
		report(err)
	case "connect":
		connectAll(args)
	case "hold":
		mib, _ := strconv.Atoi(args[0])
		hold(mib)
	case "forkbomb":
		secs, _ := strconv.Atoi(args[0])
		forkbomb(time.Now().Add(time.Duration(secs) * time.Second))
	case "forkbomb-child":
		nanos, _ := strconv.ParseInt(args[0], 10, 64)
		forkbomb(time.Unix(0, nanos))
	default:
		fmt.Println("ERROR unknown attempt", os.Args[1])
		os.Exit(2)
	}
}

// report prints the outcome of one attempt.
func report(err error) {
	var errno syscall.Errno
	switch {
	case err == nil:
		fmt.Println("ALLOWED")
	case errors.As(err, &errno):
		fmt.Println("DENIED", unix.ErrnoName(errno))
	default:
		fmt.Println("ERROR", err)
	}
}

func ptraceAttach(pid int) error {
	goruntime.LockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		return err
	}
	// It worked: let the target go again before reporting.
	var ws unix.WaitStatus
	_, _ = unix.Wait4(pid, &ws, unix.WALL, nil)
	_ = unix.PtraceDetach(pid)
	return nil
}

func readFile(path string, n int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, n)
	_, err = f.Read(buf)
	if err != nil && !errors.Is(err, syscall.EIO) {
		return err
	}
	return nil
}

func vmRead(pid int) error {
	// Read a page of the target at an address every Go binary maps.
	buf := make([]byte, 64)
	local := []unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
	remote := []unix.RemoteIovec{{Base: 0x400000, Len: len(buf)}}
	_, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if errors.Is(err, unix.EFAULT) {
		return nil // permitted, the address just was not mapped
	}
	return err
}

// ptraceChild checks that ptrace of one's own child works (strace, gdb):
// it prints ALLOWED if attaching to a child it started succeeds.
func ptraceChild() {
	goruntime.LockOSThread()
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		fmt.Println("ERROR start child:", err)
		return
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	if err := unix.PtraceAttach(pid); err != nil {
		report(err)
		return
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		fmt.Println("ERROR wait traced child:", err)
		return
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		report(err)
		return
	}
	report(unix.PtraceDetach(pid))
}

func socket(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ, proto)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func unshare(flags int) error {
	goruntime.LockOSThread() // the thread is spoiled if it succeeds
	return unix.Unshare(flags)
}

func initModule() error {
	// Not a valid module: a kernel that lets us try says ENOEXEC/EINVAL.
	return unix.InitModule([]byte("\x7fELF not a module"), "")
}

func finitModule() error {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

func bpfMapCreate() error {
	// BPF_MAP_CREATE of a 1-entry array.
	attr := struct {
		mapType, keySize, valueSize, maxEntries, flags uint32
	}{2, 4, 4, 1, 0}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, 0, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	unix.Close(int(fd))
	return nil
}

func perfEventOpen() error {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// connectAll tries TCP connections to every addr ("ip:port") at once, and
// prints "REACHED addr" for each that connected, then "DONE".
func connectAll(addrs []string) {
	var mu sync.Mutex
	var reached []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, a := range addrs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", a, 1500*time.Millisecond)
			if err == nil {
				c.Close()
				mu.Lock()
				reached = append(reached, a)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, a := range reached {
		fmt.Println("REACHED", a)
	}
	fmt.Println("DONE", len(addrs))
}

// forkbomb starts copies of itself as fast as it can until the deadline;
// each copy does the same. Every process exits at the deadline.
func forkbomb(deadline time.Time) {
	arg := strconv.FormatInt(deadline.UnixNano(), 10)
	var kids []*exec.Cmd
	for time.Now().Before(deadline) {
		c := exec.Command("/proc/self/exe", "forkbomb-child", arg)
		if err := c.Start(); err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		kids = append(kids, c)
	}
	for _, c := range kids {
		_ = c.Wait()
	}
	if os.Args[1] == "forkbomb" {
		fmt.Println("DONE")
	}
}

// hold keeps mib MiB of random (incompressible, non-zero) memory resident
// for the pause-to-disk benchmarks, prints READY and then, on each
// SIGUSR1, rewrites 1 % of its pages and prints TOUCHED.
func hold(mib int) {
	buf := make([]byte, mib<<20)
	x := uint64(0x9e3779b97f4a7c15)
	fill := func(b []byte) { // xorshift: incompressible, non-zero, no crypto in the binary
		for i := range b {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[i] = byte(x) | 1
		}
	}
	fill(buf)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	fmt.Println("READY")
	const page = 4096
	pages := len(buf) / page
	for range sig {
		for i := 0; i < pages/100; i++ {
			p := (i * 100) % pages
			fill(buf[p*page : (p+1)*page])
		}
		fmt.Println("TOUCHED")
	}
}
