package uffd_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uffdtest"
)

// Balloon removals racing faults and prefetch: the second half of guest
// memory is repeatedly dropped while threads read everything. Every page of
// the first half must equal the image; every page of the second half must
// equal either the image or zeros, never a mix (a page dropped while the
// checker reads it is read again). A final removal of the whole
// second half must then read back as zeros only.
func TestRemoveRacesFaultsAndPrefetch(t *testing.T) {
	testutil.RequireRoot(t)
	raiseProcs(t, 8)
	size := imageSize()
	src := openSource(t, writeImage(t, size, 12, 0))
	ps := int64(os.Getpagesize())
	r := startServer(t, uffd.Config{Source: src, PrefetchDelay: time.Millisecond, PrefetchChunk: 64 << 10})
	peer := newPeer(t, []uffdtest.Region{{Size: size}})
	if err := peer.Connect(r.srv.Addr()); err != nil {
		t.Fatal(err)
	}
	waitReady(t, r.srv)
	mem := peer.Mems[0]

	var stop atomic.Bool
	var removals atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		half := size / 2 / ps
		for !stop.Load() {
			first := rng.Int64N(half)
			n := 1 + rng.Int64N(min(64, half-first))
			if err := peer.Remove(0, (half+first)*ps, n*ps); err != nil {
				t.Error(err)
				return
			}
			removals.Add(1)
			runtime.Gosched()
		}
	})
	errc := make(chan error, 3)
	for w := range 3 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			errc <- checkPages(mem, src, peer.Pages(uint64(20+w)), size/2, false, ps)
		})
	}
	for range 3 {
		if err := <-errc; err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if removals.Load() == 0 {
		t.Fatal("no removal happened")
	}
	// After a final removal of the whole second half, it reads as zeros and
	// the first half as the image, whatever the prefetcher did meanwhile.
	if err := peer.Remove(0, size/2, size/2); err != nil {
		t.Fatal(err)
	}
	waitPrefetch(t, r.srv)
	if err := checkPages(mem, src, peer.Pages(30), size/2, true, ps); err != nil {
		t.Fatal(err)
	}
	st := r.srv.Stats()
	t.Logf("removals %d, stats %+v", removals.Load(), st)
	if st.RemovedPages == 0 {
		t.Error("no removed pages recorded")
	}
}

// checkPages compares pages with plain Go loads only (a page in a removed
// range may fault again at any load, and a fault inside an assembly routine
// could deadlock garbage collection, see uffdtest.Touch). Pages at or above
// zeroFrom may also read as all zeros; with mustZero they must.
func checkPages(mem []byte, src uffd.Source, pages []uffdtest.Page, zeroFrom int64, mustZero bool, ps int64) error {
	want := make([]byte, ps)
	for _, p := range pages {
		if _, err := src.ReadAt(want, p.Off); err != nil {
			return err
		}
		got := mem[p.Off : p.Off+ps]
		// A page of the removable half may be dropped while this loop
		// reads it (the loads are not one atomic read), so one pass can see
		// the image, then zeros. A torn page served by the server stays
		// torn; a page removed mid-read reads whole on a later pass.
		tries := 1
		if p.Off >= zeroFrom && !mustZero {
			tries = 5
		}
		var same, zero int
		for try := 0; try < tries; try++ {
			same, zero = 0, 0
			for i := range got {
				b := got[i]
				if b == want[i] {
					same++
				}
				if b == 0 {
					zero++
				}
			}
			if same == len(got) || zero == len(got) {
				break
			}
		}
		switch {
		case p.Off >= zeroFrom && zero == len(got):
		case same == len(got) && (p.Off < zeroFrom || !mustZero):
		default:
			return fmt.Errorf("page at %#x: %d of %d bytes match the image, %d are zero", p.Off, same, len(got), zero)
		}
	}
	return nil
}
