// Command memhog holds a number of MiB of non-zero anonymous memory for the
// CRIU pause/resume tests and benchmarks: `memhog MIB`. When ready it
// writes its pid to /tmp/memhog.pid; on SIGUSR1 it rewrites every 100th
// page (1 % of its memory) and appends "<generation> <bytes rewritten>" to
// /tmp/memhog.touched; on SIGUSR2 it appends the SHA-256 of all its
// memory to /tmp/memhog.sum (so a test can check a restore brought back
// every byte).
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
)

const page = 4096

// fill writes a cheap pseudo-random sequence (never a zero page).
func fill(p []byte, seed uint64) {
	x := seed*0x9e3779b97f4a7c15 | 1
	for i := 0; i+8 <= len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for k := range 8 {
			p[i+k] = byte(x >> (8 * k))
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: memhog MIB")
		os.Exit(2)
	}
	mib, err := strconv.Atoi(os.Args[1])
	if err != nil || mib <= 0 {
		fmt.Fprintln(os.Stderr, "memhog: bad size")
		os.Exit(2)
	}
	buf := make([]byte, mib<<20)
	for i := 0; i < len(buf); i += 1 << 20 {
		fill(buf[i:i+1<<20], uint64(i+1))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	sum := make(chan os.Signal, 1)
	signal.Notify(sum, syscall.SIGUSR2)
	go func() {
		for range sum {
			h := sha256.Sum256(buf)
			f, err := os.OpenFile("/tmp/memhog.sum", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err == nil {
				fmt.Fprintf(f, "%x\n", h)
				_ = f.Close()
			}
		}
	}()
	if err := os.WriteFile("/tmp/memhog.pid", []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for gen := 1; ; gen++ {
		<-sig
		n := 0
		for i := 0; i < len(buf); i += 100 * page {
			fill(buf[i:i+page], uint64(gen)<<40|uint64(i))
			n += page
		}
		f, err := os.OpenFile("/tmp/memhog.touched", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%d %d\n", gen, n)
			_ = f.Close()
		}
		runtime.KeepAlive(buf)
	}
}
