package snapshot_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// psHeader encodes a page_server_iov as CRIU 4 sends it (x86-64).
func psHeader(cmd uint32, nr, vaddr, dst uint64) []byte {
	b := make([]byte, 32)
	binary.LittleEndian.PutUint32(b, cmd)
	binary.LittleEndian.PutUint64(b[8:], nr)
	binary.LittleEndian.PutUint64(b[16:], vaddr)
	binary.LittleEndian.PutUint64(b[24:], dst)
	return b
}

// sendDump plays CRIU's side of a dump to a page server: for each
// process OPEN2 (answered with a byte), its ranges as ADD_F with
// PE_PRESENT|PE_LAZY and the pages; then CLOSE (answered with an int32).
// With cut set it stops after the first range, as a CRIU killed mid-dump.
func sendDump(t testing.TB, addr string, procs []fakeProc, cut bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range procs {
		dst := uint64(p.pid)<<8 | 1
		if _, err := c.Write(psHeader(4, 0, 0, dst)); err != nil {
			t.Fatal(err)
		}
		var hasParent [1]byte
		if _, err := io.ReadFull(c, hasParent[:]); err != nil || hasParent[0] != 0 {
			t.Fatalf("OPEN2 answer %v, %v", hasParent, err)
		}
		for _, v := range p.vmas {
			if _, err := c.Write(append(psHeader(6|6<<16, uint64(len(v.data)/page), v.vaddr, dst), v.data...)); err != nil {
				t.Fatal(err)
			}
			if cut {
				return
			}
		}
	}
	if _, err := c.Write(psHeader(0x1023, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	var status [4]byte
	if _, err := io.ReadFull(c, status[:]); err != nil || status != [4]byte{} {
		t.Fatalf("CLOSE answer %v, %v", status, err)
	}
}

// TestCRIUPageServer (issue 21, item 3): a dump streamed over CRIU's
// page-server protocol is stored by virtual address while it arrives and
// restores to exactly the files CRIU would have written locally (pagemaps
// and pages), a streamed re-pause stores only the changed pages, and a
// dump cut off mid-way publishes nothing and leaves no file behind.
func TestCRIUPageServer(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	m := &snapshot.Manager{Store: st, TempDir: tmp}
	r := rand.New(rand.NewPCG(5, 6))
	heap := randPages(r, 3000)
	procs := []fakeProc{
		{pid: 1, pagesID: 1, vmas: []fakeVMA{
			{vaddr: 0x5555_0000_0000, data: randPages(r, 10)},
			{vaddr: 0x5555_8000_0000 - 32*page, data: randPages(r, 64)}, // across a 1 GiB window
			{vaddr: 0x7f00_0000_0000, data: heap},
			{vaddr: 0x7ffc_0000_0000, data: make([]byte, 16*page)}, // zero pages
		}},
		{pid: 7, pagesID: 2, vmas: []fakeVMA{{vaddr: 0x40_0000, data: randPages(r, 100)}}},
	}
	extra := map[string][]byte{"core-1.img": []byte("core one"), "mm-1.img": []byte("mm"), "inventory.img": []byte("inv")}

	stream := func(name, parent string, procs []fakeProc) snapshot.CRIUStats {
		t.Helper()
		ps, err := m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{Parent: parent, Metadata: map[string]string{"k": "v"}})
		if err != nil {
			t.Fatal(err)
		}
		sendDump(t, ps.Addr(), procs, false)
		dir := filepath.Join(t.TempDir(), "images")
		writeCRIUDir(t, dir, nil, extra) // what CRIU leaves locally: no pagemaps, no pages
		h, stats, err := ps.Finish(ctx, name, dir, nil)
		ps.Abort() // no-op after Finish
		if err != nil {
			t.Fatalf("Finish: %v", err)
		}
		if h.Metadata["k"] != "v" || h.Metadata[snapshot.MetaCRIULayout] != snapshot.CRIULayoutVA {
			t.Fatalf("metadata %v", h.Metadata)
		}
		want := filepath.Join(t.TempDir(), "want")
		writeCRIUDir(t, want, procs, extra)
		sameDirs(t, want, restoreCRIU(t, m, name))
		return stats
	}
	st1 := stream("cap.s1", "", procs)
	// Only a root-owned peer is served: a connection from another user
	// first is closed, and CRIU's (root) connection after it still works.
	if os.Geteuid() == 0 {
		ps, err := m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ps.Addr())
		cmd := exec.Command("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+"; printf 'junk%.0s' {1..20} >&3; cat <&3")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		// cat ends when the server closes (or resets) the connection.
		if out, err := cmd.CombinedOutput(); err != nil && !strings.Contains(string(out), "reset") {
			t.Fatalf("unprivileged connection: %v: %s", err, out)
		}
		sendDump(t, ps.Addr(), procs, false)
		dir := filepath.Join(t.TempDir(), "images")
		writeCRIUDir(t, dir, nil, extra)
		if _, _, err := ps.Finish(ctx, "cap.root", dir, nil); err != nil {
			t.Fatalf("Finish after an unprivileged connection: %v", err)
		}
		want := filepath.Join(t.TempDir(), "want")
		writeCRIUDir(t, want, procs, extra)
		sameDirs(t, want, restoreCRIU(t, m, "cap.root"))
	}
	wantPages := int64(10+64+3000+16+100) * page
	if st1.PageBytes != wantPages {
		t.Errorf("page bytes %d, want %d", st1.PageBytes, wantPages)
	}
	if nonzero := wantPages - 16*page; st1.StoredBytes < nonzero || st1.StoredBytes > nonzero+64<<10 {
		t.Errorf("stored %d bytes, want the %d non-zero page bytes and the tar", st1.StoredBytes, nonzero)
	}

	// 1 % of the heap rewritten, a mapping in front, pid 7 replaced.
	touched := 0
	for i := 0; i < 3000; i += 100 {
		copy(heap[i*page:], randPages(r, 1))
		touched++
	}
	procs[0].vmas = append([]fakeVMA{{vaddr: 0x1000_0000, data: randPages(r, 5)}}, procs[0].vmas...)
	procs[1] = fakeProc{pid: 9, pagesID: 2, vmas: []fakeVMA{{vaddr: 0x40_0000, data: randPages(r, 3)}}}
	st2 := stream("cap.s2", "cap.s1", procs)
	changed := int64(touched+5+3) * page
	if limit := changed*11/10 + 4*page; st2.StoredBytes > limit {
		t.Errorf("streamed re-pause stored %d bytes for %d changed (limit %d)", st2.StoredBytes, changed, limit)
	}
	// The same dump written locally and stored by PauseCRIU restores the same.
	local := filepath.Join(t.TempDir(), "local")
	writeCRIUDir(t, local, procs, extra)
	if _, _, err := m.PauseCRIU(ctx, "cap.l2", local, snapshot.CRIUPauseOptions{Parent: "cap.s1"}); err != nil {
		t.Fatal(err)
	}
	sameDirs(t, local, restoreCRIU(t, m, "cap.l2"))

	// A dump cut off mid-way (CRIU killed): Finish fails, nothing is
	// published, the data file being built is gone.
	before, _ := st.ListHeaders(ctx)
	ps, err := m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{Parent: "cap.s2"})
	if err != nil {
		t.Fatal(err)
	}
	sendDump(t, ps.Addr(), procs, true)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, _, err := ps.Finish(cctx, "cap.cut", t.TempDir(), nil); err == nil {
		t.Fatal("Finish of a dump cut off mid-way succeeded")
	}
	after, _ := st.ListHeaders(ctx)
	if len(after) != len(before) {
		t.Errorf("headers %v after a cut dump, want %v", after, before)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("temp dir holds %d files after a cut dump", len(ents))
	}
	// Aborted before CRIU connected: nothing left either.
	ps, err = m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ps.Abort()
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("temp dir holds %d files after Abort", len(ents))
	}
	// Pages in a parent image (a pre-dump's holes) are refused.
	ps, err = m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ps.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(psHeader(4, 0, 0, 1<<8|1))
	_, _ = io.ReadFull(c, make([]byte, 1))
	_, _ = c.Write(psHeader(6|1<<16, 1, 0x1000, 1<<8|1))
	if _, _, err := ps.Finish(cctx, "cap.hole", t.TempDir(), nil); !errors.Is(err, snapshot.ErrCRIULayout) {
		t.Errorf("parent pages: %v, want ErrCRIULayout", err)
	}
	_ = c.Close()
}

// BenchmarkCRIUPageServer measures the store side of a streamed pause: a
// client sends a 256 MiB dump (one range of random pages) over loopback
// TCP as CRIU does, and the page server stores it; next to PauseCRIU of
// the same dump written to a directory first (write, then read back). In
// MiB/s of dumped memory.
func BenchmarkCRIUPageServer(b *testing.B) {
	const mib = 256
	ctx := context.Background()
	r := rand.New(rand.NewPCG(8, 9))
	procs := []fakeProc{{pid: 1, pagesID: 1, vmas: []fakeVMA{{vaddr: 0x7f00_0000_0000, data: randPages(r, mib<<20/page)}}}}
	root := b.TempDir()
	var streamed, local time.Duration
	for i := 0; i < b.N; i++ {
		st, err := store.OpenLocal(filepath.Join(root, "store"))
		if err != nil {
			b.Fatal(err)
		}
		m := &snapshot.Manager{Store: st, TempDir: root}
		t0 := time.Now()
		ps, err := m.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{})
		if err != nil {
			b.Fatal(err)
		}
		sendDump(b, ps.Addr(), procs, false)
		dir := filepath.Join(root, "images")
		writeCRIUDir(b, dir, nil, map[string][]byte{"core-1.img": []byte("core")})
		if _, _, err := ps.Finish(ctx, "s", dir, nil); err != nil {
			b.Fatal(err)
		}
		streamed += time.Since(t0)
		_ = os.RemoveAll(dir)
		t0 = time.Now()
		writeCRIUDir(b, dir, procs, map[string][]byte{"core-1.img": []byte("core")})
		if _, _, err := m.PauseCRIU(ctx, "l", dir, snapshot.CRIUPauseOptions{}); err != nil {
			b.Fatal(err)
		}
		local += time.Since(t0)
		_ = os.RemoveAll(dir)
		_ = os.RemoveAll(filepath.Join(root, "store"))
	}
	n := float64(b.N)
	b.ReportMetric(mib/(streamed.Seconds()/n), "streamed-MiB/s")
	b.ReportMetric(mib/(local.Seconds()/n), "write-then-read-MiB/s")
}
