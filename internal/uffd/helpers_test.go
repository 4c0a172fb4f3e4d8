package uffd_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uffdtest"
)

// Child mode: the test binary re-executed as a separate "VMM" process.
var (
	childSocket  = flag.String("uffdtest.socket", "", "child mode: page server socket to connect to")
	childImage   = flag.String("uffdtest.image", "", "child mode: raw image to verify guest memory against")
	childRegions = flag.String("uffdtest.regions", "", "child mode: regions as size@offset,...")
	childMode    = flag.String("uffdtest.mode", "verify", "child mode: verify (check every byte, balloon a range, exit) or hang (fault one page, wait to be killed)")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if *childSocket != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// runChild behaves like a resuming Firecracker: map, register, connect,
// send, then run the guest (touch pages) until done or killed.
func runChild() error {
	regions, err := parseRegions(*childRegions)
	if err != nil {
		return err
	}
	runtime.GOMAXPROCS(8)
	src, err := uffd.OpenFile(*childImage, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	peer, err := uffdtest.NewPeer(regions)
	if err != nil {
		return err
	}
	if err := peer.Connect(*childSocket); err != nil {
		return err
	}
	ps := int64(os.Getpagesize())
	switch *childMode {
	case "hang":
		if err := peer.Verify(src, []uffdtest.Page{{Region: 0, Off: 0}}, 1, nil); err != nil {
			return err
		}
		fmt.Println("touched")
		select {} // killed by the parent
	case "verify":
		if err := peer.Verify(src, peer.Pages(7), 4, nil); err != nil {
			return err
		}
		// Balloon inflation: drop a quarter of region 0; it must read back
		// as zeros, the rest unchanged.
		lo, n := regions[0].Size/4/ps*ps, regions[0].Size/4/ps*ps
		if err := peer.Remove(0, lo, n); err != nil {
			return err
		}
		removed := func(p uffdtest.Page) bool { return p.Region == 0 && p.Off >= lo && p.Off < lo+n }
		if err := peer.Verify(src, peer.Pages(8), 4, removed); err != nil {
			return fmt.Errorf("after remove: %w", err)
		}
		fmt.Println("ok")
		return nil // exit without closing anything, like a VMM that exits
	}
	return fmt.Errorf("unknown mode %q", *childMode)
}

func formatRegions(rs []uffdtest.Region) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%d@%d", r.Size, r.Offset)
	}
	return strings.Join(parts, ",")
}

func parseRegions(s string) ([]uffdtest.Region, error) {
	var rs []uffdtest.Region
	for part := range strings.SplitSeq(s, ",") {
		size, off, ok := strings.Cut(part, "@")
		if !ok {
			return nil, fmt.Errorf("region %q: want size@offset", part)
		}
		sz, err1 := strconv.ParseInt(size, 10, 64)
		o, err2 := strconv.ParseInt(off, 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("region %q: %w", part, err)
		}
		rs = append(rs, uffdtest.Region{Size: sz, Offset: o})
	}
	return rs, nil
}

// writeImage writes a sparse raw image of size bytes: each page is zero with
// probability zeroFrac, random otherwise.
func writeImage(tb testing.TB, size int64, seed uint64, zeroFrac float64) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "mem.img")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	ps := int64(os.Getpagesize())
	rng := rand.New(rand.NewPCG(seed, seed+1))
	var seedBytes [32]byte
	for i := range seedBytes {
		seedBytes[i] = byte(rng.Uint32())
	}
	fill := rand.NewChaCha8(seedBytes)
	const batch = 4 << 20
	buf := make([]byte, batch)
	for off := int64(0); off < size; off += batch {
		n := min(batch, size-off)
		_, _ = fill.Read(buf[:n])
		for p := int64(0); p < n; p += ps {
			if rng.Float64() < zeroFrac {
				clear(buf[p : p+ps])
			}
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	return path
}

func openSource(tb testing.TB, path string) *uffd.FileSource {
	tb.Helper()
	src, err := uffd.OpenFile(path, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := src.Close(); err != nil {
			tb.Error(err)
		}
	})
	return src
}

// sockPath returns a short socket path (sun_path is limited to 108 bytes).
func sockPath(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "uffd")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

type running struct {
	srv  *uffd.Server
	errc chan error
}

// wait returns Serve's result, failing the test if it takes longer than d.
func (r running) wait(tb testing.TB, d time.Duration) error {
	tb.Helper()
	select {
	case err := <-r.errc:
		r.errc <- err
		return err
	case <-time.After(d):
		tb.Fatalf("Serve did not return within %v", d)
		return nil
	}
}

func startServer(tb testing.TB, cfg uffd.Config) running {
	tb.Helper()
	srv, err := uffd.Listen(sockPath(tb), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	r := running{srv: srv, errc: make(chan error, 1)}
	go func() { r.errc <- srv.Serve(context.Background()) }()
	tb.Cleanup(func() {
		if err := srv.Close(); err != nil {
			tb.Error(err)
		}
		<-r.errc
	})
	return r
}

func newPeer(tb testing.TB, regions []uffdtest.Region) *uffdtest.Peer {
	tb.Helper()
	peer, err := uffdtest.NewPeer(regions)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := peer.Close(); err != nil {
			tb.Error(err)
		}
	})
	return peer
}

// raiseProcs makes sure the server's goroutines find a P while several
// goroutines of the same process are blocked in page faults (a thread
// blocked in a fault keeps its P until the scheduler preempts it).
func raiseProcs(tb testing.TB, n int) {
	tb.Helper()
	old := runtime.GOMAXPROCS(0)
	if old < n {
		runtime.GOMAXPROCS(n)
		tb.Cleanup(func() { runtime.GOMAXPROCS(old) })
	}
}

func waitReady(tb testing.TB, srv *uffd.Server) {
	tb.Helper()
	select {
	case <-srv.Ready():
	case <-time.After(testutil.Short):
		tb.Fatal("server did not finish the handshake")
	}
}

func waitPrefetch(tb testing.TB, srv *uffd.Server) {
	tb.Helper()
	select {
	case <-srv.PrefetchDone():
	case <-time.After(testutil.Long):
		tb.Fatalf("prefetch did not finish: %+v", srv.Stats())
	}
}

func countFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}
