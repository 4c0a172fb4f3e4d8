package uffd_test

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uffdtest"
)

var benchSink atomic.Uint64

// touchPages writes one byte of every page of mem from a locked OS thread
// (a plain Go store: an async-preemption point, see uffdtest.Touch) and
// returns how long it took.
func touchPages(mem []byte, ps int) time.Duration {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	var sum uint64
	for off := 0; off < len(mem); off += ps {
		mem[off]++
		sum += uint64(mem[off])
	}
	d := time.Since(start)
	benchSink.Add(sum)
	return d
}

// BenchmarkFaults compares page faults served by the UFFD server (each one a
// uffd message, an image read and a UFFDIO_COPY) with the machine's plain
// anonymous-page fault rate, both measured in the same iteration.
func BenchmarkFaults(b *testing.B) {
	testutil.RequireRoot(b)
	raiseProcs(b, 4)
	ps := os.Getpagesize()
	size := int64(32 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	src := openSource(b, writeImage(b, size, 10, 0)) // every page holds data
	pages := int(size) / ps
	var anonTime, uffdTime time.Duration
	rounds := 0
	for b.Loop() {
		anon, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			b.Fatal(err)
		}
		anonTime += touchPages(anon, ps)
		if err := unix.Munmap(anon); err != nil {
			b.Fatal(err)
		}

		srv, err := uffd.Listen(sockPath(b), uffd.Config{Source: src, DisablePrefetch: true})
		if err != nil {
			b.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(b.Context()) }()
		peer, err := uffdtest.NewPeer([]uffdtest.Region{{Size: size}})
		if err != nil {
			b.Fatal(err)
		}
		if err := peer.Connect(srv.Addr()); err != nil {
			b.Fatal(err)
		}
		<-srv.Ready()
		uffdTime += touchPages(peer.Mems[0], ps)
		if err := peer.Hangup(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		if st := srv.Stats(); st.Faults != uint64(pages) {
			b.Fatalf("served %d faults, want %d", st.Faults, pages)
		}
		if err := srv.Close(); err != nil {
			b.Fatal(err)
		}
		if err := peer.Close(); err != nil {
			b.Fatal(err)
		}
		rounds++
	}
	n := float64(rounds * pages)
	anonRate := n / anonTime.Seconds()
	uffdRate := n / uffdTime.Seconds()
	b.ReportMetric(uffdRate, "uffd-faults/s")
	b.ReportMetric(anonRate, "anon-faults/s")
	b.ReportMetric(uffdRate/anonRate, "uffd/anon")
	b.ReportMetric(float64(uffdTime.Nanoseconds())/n, "ns/uffd-fault")
}

// BenchmarkPrefetch resumes a 1 GiB image (128 MiB with -short): time to the
// first page a guest touches and to the end of background prefetch, against
// the baseline of reading the whole image into fresh anonymous memory (what
// an eager, non-lazy restore costs), measured in the same iteration.
func BenchmarkPrefetch(b *testing.B) {
	testutil.RequireRoot(b)
	raiseProcs(b, 4)
	size := int64(1 << 30)
	if testing.Short() {
		size = 128 << 20
	}
	src := openSource(b, writeImage(b, size, 11, 0.1))
	ps := int64(os.Getpagesize())
	var first, full, eager, srvFirst, ready time.Duration
	rounds := 0
	for b.Loop() {
		anon, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := src.ReadAt(anon, 0); err != nil {
			b.Fatal(err)
		}
		eager += time.Since(start)
		if err := unix.Munmap(anon); err != nil {
			b.Fatal(err)
		}

		srv, err := uffd.Listen(sockPath(b), uffd.Config{Source: src})
		if err != nil {
			b.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(b.Context()) }()
		peer, err := uffdtest.NewPeer([]uffdtest.Region{{Size: size}})
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if err := peer.Connect(srv.Addr()); err != nil {
			b.Fatal(err)
		}
		<-srv.Ready()
		ready += time.Since(start)
		func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			uffdtest.Touch(peer.Mems[0][size/2:])
		}()
		first += time.Since(start)
		<-srv.PrefetchDone()
		full += time.Since(start)
		srvFirst += srv.Stats().TimeToFirstFault
		if err := peer.Verify(src, []uffdtest.Page{{Off: 0}, {Off: size / 2}, {Off: size - ps}}, 1, nil); err != nil {
			b.Fatal(err)
		}
		if err := peer.Hangup(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			b.Fatal(err)
		}
		if err := peer.Close(); err != nil {
			b.Fatal(err)
		}
		rounds++
	}
	r := float64(rounds)
	gb := float64(size) / 1e9
	prefetchGBps := gb * r / full.Seconds()
	eagerGBps := gb * r / eager.Seconds()
	b.ReportMetric(float64(first.Microseconds())/r, "first-page-µs")
	b.ReportMetric(float64(full.Milliseconds())/r, "full-prefetch-ms")
	b.ReportMetric(prefetchGBps, "prefetch-GB/s")
	b.ReportMetric(eagerGBps, "eager-copy-GB/s")
	b.ReportMetric(prefetchGBps/eagerGBps, "prefetch/eager")
	b.ReportMetric(float64(srvFirst.Microseconds())/r, "handshake-to-first-fault-µs")
	b.ReportMetric(float64(ready.Microseconds())/r, "connect-to-handshake-µs")
	b.ReportMetric(eager.Seconds()/first.Seconds(), "eager/first-page")
}
