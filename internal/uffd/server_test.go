package uffd_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/internal/uffd"
	"github.com/wrenn-dev/wrenn/internal/uffd/uffdtest"
)

func imageSize() int64 {
	if testing.Short() {
		return 8 << 20
	}
	return 64 << 20
}

func TestServeVerifiesEveryByte(t *testing.T) {
	testutil.RequireRoot(t)
	raiseProcs(t, 8)
	size := imageSize()
	img := writeImage(t, size, 1, 0.3)
	// The first 2 MiB are zero: a whole zero huge page.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 2<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	src := openSource(t, img)
	ps := int64(os.Getpagesize())
	tests := []struct {
		name     string
		regions  []uffdtest.Region
		prefetch bool
		threads  int
	}{
		{"one region, faults only", []uffdtest.Region{{Size: size, Offset: 0}}, false, 4},
		{"one region, faults and prefetch", []uffdtest.Region{{Size: size, Offset: 0}}, true, 4},
		{
			// Offsets out of address order and a hole in the image, as
			// with Firecracker's regions around the 32-bit MMIO gap.
			"three regions with offsets", []uffdtest.Region{
				{Size: size / 4, Offset: size / 2},
				{Size: size / 2, Offset: 0},
				{Size: size/8 - ps, Offset: size*3/4 + ps},
			}, true, 3,
		},
	}
	huge := int64(2 << 20)
	tests = append(tests, []struct {
		name     string
		regions  []uffdtest.Region
		prefetch bool
		threads  int
	}{
		{"2 MiB pages, faults only", []uffdtest.Region{{Size: size / 2, Offset: size / 2, PageSize: huge}, {Size: huge, Offset: 0, PageSize: huge}}, false, 4},
		{"2 MiB pages, faults and prefetch", []uffdtest.Region{{Size: size, Offset: 0, PageSize: huge}}, true, 4},
	}...)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startServer(t, uffd.Config{Source: src, DisablePrefetch: !tt.prefetch})
			peer := newPeer(t, tt.regions)
			if err := peer.Connect(r.srv.Addr()); err != nil {
				t.Fatal(err)
			}
			waitReady(t, r.srv)
			pages := peer.Pages(uint64(i))
			if tt.prefetch {
				// Touch only the lower half of each region first, so the
				// upper half can only become present through prefetch (with
				// four huge pages, faulting all of them can otherwise beat
				// the prefetcher to every page). Then read everything.
				var lower []uffdtest.Page
				for _, p := range pages {
					if p.Off < int64(len(peer.Mems[p.Region]))/2 {
						lower = append(lower, p)
					}
				}
				if err := peer.Verify(src, lower, tt.threads, nil); err != nil {
					t.Fatal(err)
				}
				waitPrefetch(t, r.srv)
			}
			if err := peer.Verify(src, pages, tt.threads, nil); err != nil {
				t.Fatal(err)
			}
			wantPages := 0
			for _, reg := range tt.regions {
				if reg.PageSize == 0 {
					wantPages += int(reg.Size / ps)
				} else {
					wantPages += int(reg.Size / reg.PageSize)
				}
			}
			if tt.prefetch {
				waitPrefetch(t, r.srv)
			}
			// The kernel wakes the toucher before the handler has updated
			// its counters for the last fault.
			testutil.Eventually(t, testutil.Short, func() bool {
				st := r.srv.Stats()
				return st.PresentPages == st.Pages
			}, "every page present")
			st := r.srv.Stats()
			if st.Pages != wantPages || st.PresentPages != wantPages {
				t.Errorf("pages/present = %d/%d, want %d/%d", st.Pages, st.PresentPages, wantPages, wantPages)
			}
			if st.Faults == 0 || st.TimeToFirstFault <= 0 {
				t.Errorf("faults = %d, time to first fault %v; want some", st.Faults, st.TimeToFirstFault)
			}
			if !tt.prefetch {
				// Threads faulting on the same (huge) page at once each get
				// a fault message; all but one end in EEXIST.
				if st.Faults < uint64(wantPages) || st.ZeroFaults == 0 || st.PrefetchedPages != 0 {
					t.Errorf("faults/zero/prefetched = %d/%d/%d, want >= %d/>0/0", st.Faults, st.ZeroFaults, st.PrefetchedPages, wantPages)
				}
				if got := len(r.srv.AccessOrder()); got != wantPages {
					t.Errorf("access order has %d pages, want %d", got, wantPages)
				}
			} else if !st.PrefetchDone || st.TimeToFullPrefetch <= 0 || st.PrefetchedPages == 0 {
				t.Errorf("prefetch stats %+v, want done with pages", st)
			}
			// The peer exits: Serve must return nil on its own.
			if err := peer.Hangup(); err != nil {
				t.Fatal(err)
			}
			if err := r.wait(t, testutil.Short); err != nil {
				t.Fatalf("Serve after peer exit = %v, want nil", err)
			}
		})
	}
}

func TestAccessOrderRoundTrip(t *testing.T) {
	testutil.RequireRoot(t)
	raiseProcs(t, 8)
	size := int64(4 << 20)
	src := openSource(t, writeImage(t, size, 2, 0.1))
	ps := int64(os.Getpagesize())
	regions := []uffdtest.Region{{Size: size / 2, Offset: size / 2}}
	touched := []uffdtest.Page{{Off: 5 * ps}, {Off: 1 * ps}, {Off: 100 * ps}, {Off: 6 * ps}}

	r := startServer(t, uffd.Config{Source: src, DisablePrefetch: true})
	peer := newPeer(t, regions)
	if err := peer.Connect(r.srv.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := peer.Verify(src, touched, 1, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Short, func() bool { return r.srv.Stats().Faults == uint64(len(touched)) }, "faults counted")
	got := r.srv.AccessOrder()
	want := make([]int64, len(touched))
	for i, p := range touched {
		want[i] = size/2 + p.Off
	}
	if len(got) != len(want) {
		t.Fatalf("access order = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("access order = %v, want %v", got, want)
		}
	}

	// The next resume prefetches that order first; offsets outside every
	// mapping are ignored.
	ordered := uffd.WithPrefetchOrder(src, append(got, -1, 0, size+ps))
	r2 := startServer(t, uffd.Config{Source: ordered, PrefetchDelay: time.Millisecond})
	peer2 := newPeer(t, regions)
	if err := peer2.Connect(r2.srv.Addr()); err != nil {
		t.Fatal(err)
	}
	waitPrefetch(t, r2.srv)
	if err := peer2.Verify(src, peer2.Pages(3), 2, nil); err != nil {
		t.Fatal(err)
	}
	if st := r2.srv.Stats(); st.Faults != 0 || st.PrefetchedPages != uint64(st.Pages) {
		t.Errorf("after full prefetch: faults %d prefetched %d of %d, want 0 and all", st.Faults, st.PrefetchedPages, st.Pages)
	}
}

func TestRemoveServesZeros(t *testing.T) {
	testutil.RequireRoot(t)
	raiseProcs(t, 8)
	size := imageSize()
	src := openSource(t, writeImage(t, size, 3, 0.05))
	ps := int64(os.Getpagesize())
	for _, prefetch := range []bool{false, true} {
		name := "faults only"
		if prefetch {
			name = "with prefetch"
		}
		t.Run(name, func(t *testing.T) {
			r := startServer(t, uffd.Config{Source: src, DisablePrefetch: !prefetch, PrefetchDelay: time.Millisecond})
			peer := newPeer(t, []uffdtest.Region{{Size: size, Offset: 0}})
			if err := peer.Connect(r.srv.Addr()); err != nil {
				t.Fatal(err)
			}
			var firstHalf []uffdtest.Page
			for _, p := range peer.Pages(4) {
				if p.Off < size/2 {
					firstHalf = append(firstHalf, p)
				}
			}
			if err := peer.Verify(src, firstHalf, 3, nil); err != nil {
				t.Fatal(err)
			}
			// Balloon inflation over the middle half: half of it was
			// loaded, half (without prefetch) never was.
			lo, n := size/4, size/2
			if err := peer.Remove(0, lo, n); err != nil {
				t.Fatal(err)
			}
			if prefetch {
				waitPrefetch(t, r.srv)
			}
			removed := func(p uffdtest.Page) bool { return p.Off >= lo && p.Off < lo+n }
			if err := peer.Verify(src, peer.Pages(5), 3, removed); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, testutil.Short, func() bool {
				st := r.srv.Stats()
				return st.PresentPages == st.Pages
			}, "every page present")
			st := r.srv.Stats()
			if want := int(n / ps); st.RemovedPages != want {
				t.Errorf("removed pages = %d, want %d", st.RemovedPages, want)
			}
			if st.PresentPages != st.Pages {
				t.Errorf("present = %d of %d after touching everything", st.PresentPages, st.Pages)
			}
		})
	}
}

func TestStopAndClose(t *testing.T) {
	src := openSource(t, writeImage(t, 1<<20, 4, 0))
	t.Run("close before peer", func(t *testing.T) {
		srv, err := uffd.Listen(sockPath(t), uffd.Config{Source: src})
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(context.Background()) }()
		time.Sleep(10 * time.Millisecond)
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, uffd.ErrClosed) {
			t.Fatalf("Serve = %v, want ErrClosed", err)
		}
		if _, err := os.Stat(srv.Addr()); !os.IsNotExist(err) {
			t.Errorf("socket file left behind: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		if err := srv.Serve(context.Background()); !errors.Is(err, uffd.ErrClosed) {
			t.Errorf("Serve after Close = %v, want ErrClosed", err)
		}
	})
	t.Run("context cancelled", func(t *testing.T) {
		srv, err := uffd.Listen(sockPath(t), uffd.Config{Source: src})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ctx) }()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve = %v, want context.Canceled", err)
		}
	})
	t.Run("close during a stalled handshake", func(t *testing.T) {
		r := startServer(t, uffd.Config{Source: src, HandshakeTimeout: time.Hour})
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: r.srv.Addr(), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		time.Sleep(20 * time.Millisecond) // let Serve accept and block reading
		done := make(chan error, 1)
		go func() { done <- r.srv.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(testutil.Short):
			t.Fatal("Close blocked behind the handshake")
		}
		if err := r.wait(t, testutil.Short); !errors.Is(err, uffd.ErrClosed) {
			t.Fatalf("Serve = %v, want ErrClosed", err)
		}
	})
	t.Run("close while serving", func(t *testing.T) {
		testutil.RequireRoot(t)
		r := startServer(t, uffd.Config{Source: src})
		peer := newPeer(t, []uffdtest.Region{{Size: 1 << 20}})
		if err := peer.Connect(r.srv.Addr()); err != nil {
			t.Fatal(err)
		}
		waitReady(t, r.srv)
		if err := r.srv.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.wait(t, testutil.Short); !errors.Is(err, uffd.ErrClosed) {
			t.Fatalf("Serve = %v, want ErrClosed", err)
		}
	})
}

func TestHandshakeRejects(t *testing.T) {
	src := openSource(t, writeImage(t, 1<<20, 5, 0))
	ps := uint64(os.Getpagesize())
	goodJSON, err := json.Marshal([]uffd.Mapping{{BaseHostVirtAddr: 1 << 30, Size: 1 << 20, PageSize: ps}})
	if err != nil {
		t.Fatal(err)
	}
	pipeFD := func(t *testing.T) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
		return p[0]
	}
	uffdFD := func(t *testing.T) int {
		testutil.RequireRoot(t)
		peer := newPeer(t, []uffdtest.Region{{Size: 1 << 20}})
		return peer.UFFD
	}
	tests := []struct {
		name    string
		body    []byte
		fd      func(t *testing.T) int
		wantErr string
	}{
		{"no descriptor", goodJSON, nil, "peer closed before"},
		{"not a userfaultfd", goodJSON, pipeFD, "not a userfaultfd"},
		{"malformed json", []byte(`{"base_host_virt_addr":`), pipeFD, "peer closed before"},
		{"mapping outside image", mustJSON(t, []uffd.Mapping{{BaseHostVirtAddr: 1 << 30, Size: 2 << 20, PageSize: ps}}), uffdFD, "outside image"},
		{"unaligned base", mustJSON(t, []uffd.Mapping{{BaseHostVirtAddr: 1<<30 + 1, Size: 1 << 20, PageSize: ps}}), uffdFD, "not aligned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startServer(t, uffd.Config{Source: src, HandshakeTimeout: testutil.Short})
			var oob []byte
			if tt.fd != nil {
				oob = unix.UnixRights(tt.fd(t))
			}
			fds := countFDs(t)
			conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: r.srv.Addr(), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := conn.WriteMsgUnix(tt.body, oob, nil); err != nil {
				t.Fatal(err)
			}
			_ = conn.CloseWrite()
			err = r.wait(t, testutil.Short)
			_ = conn.Close()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Serve = %v, want error containing %q", err, tt.wantErr)
			}
			// The listener is closed after the one accept; the received
			// descriptor and the connection must be closed too.
			if got := countFDs(t); got != fds-1 {
				t.Errorf("fds after = %d, want %d (leak)", got, fds-1)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		r := startServer(t, uffd.Config{Source: src, HandshakeTimeout: 50 * time.Millisecond})
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: r.srv.Addr(), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := r.wait(t, testutil.Short); err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("Serve = %v, want a timeout", err)
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The real setup: the VMM is another process. Re-execute the test binary as
// that process; the server must serve it, see the balloon removal, notice
// its exit and leave no descriptor behind.
func TestSubprocessPeer(t *testing.T) {
	testutil.RequireRoot(t)
	size := imageSize()
	img := writeImage(t, size, 6, 0.25)
	src := openSource(t, img)
	ps := int64(os.Getpagesize())
	regions := []uffdtest.Region{{Size: size / 2, Offset: size / 2}, {Size: size/2 - 4*ps, Offset: 0}}

	t.Run("verify and exit", func(t *testing.T) {
		fds := countFDs(t)
		r := startServer(t, uffd.Config{Source: src})
		cmd := exec.Command(os.Args[0], "-uffdtest.socket="+r.srv.Addr(), "-uffdtest.image="+img,
			"-uffdtest.regions="+formatRegions(regions), "-uffdtest.mode=verify")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Fatalf("peer process: %v\n%s", err, out)
		}
		if err := r.wait(t, testutil.Short); err != nil {
			t.Fatalf("Serve after peer exit = %v, want nil", err)
		}
		st := r.srv.Stats()
		if st.Faults == 0 || st.RemovedPages != int(size/2/4/ps) {
			t.Errorf("stats %+v: want faults and %d removed pages", st, size/2/4/ps)
		}
		if err := r.srv.Close(); err != nil {
			t.Fatal(err)
		}
		if got := countFDs(t); got != fds {
			t.Errorf("fds = %d after serving, want %d", got, fds)
		}
	})

	t.Run("killed mid-resume", func(t *testing.T) {
		r := startServer(t, uffd.Config{Source: src, DisablePrefetch: true})
		cmd := exec.Command(os.Args[0], "-uffdtest.socket="+r.srv.Addr(), "-uffdtest.image="+img,
			"-uffdtest.regions="+formatRegions(regions), "-uffdtest.mode=hang")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "touched\n" {
			t.Fatalf("peer said %q, %v", line, err)
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := r.wait(t, testutil.Short); err != nil {
			t.Fatalf("Serve after peer kill = %v, want nil", err)
		}
		if st := r.srv.Stats(); st.Faults != 1 {
			t.Errorf("faults = %d, want 1", st.Faults)
		}
	})
}
