package files_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// prngStream is a deterministic pseudo-random byte stream of a fixed size,
// generated on the fly (never held in memory).
func prngStream(seed byte, size int64) io.Reader {
	var key [32]byte
	key[0] = seed
	return io.LimitReader(rand.NewChaCha8(key), size)
}

// patternReader yields size bytes by repeating a random 1 MiB block. It
// implements WriterTo so copies move whole blocks, the same for the /files
// client and the plain TCP baseline.
type patternReader struct {
	block []byte
	left  int64
}

func newPattern(block []byte, size int64) *patternReader {
	return &patternReader{block: block, left: size}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.block[:min(int64(len(p.block)), p.left)])
	p.left -= int64(n)
	return n, nil
}

func (p *patternReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for p.left > 0 {
		n, err := w.Write(p.block[:min(int64(len(p.block)), p.left)])
		total += int64(n)
		p.left -= int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writerOnly hides ReadFrom so io.CopyBuffer really uses the given buffer.
type writerOnly struct{ io.Writer }

// procStatus returns a field of /proc/self/status in bytes.
func procStatus(t testing.TB, field string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s %q: %v", field, v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// TestLargeTransfer uploads and downloads 1 GiB (64 MiB with -short) over
// loopback and checks the sha256 on both sides and that the process's peak
// RSS grew by less than 64 MiB: nothing buffers the file.
func TestLargeTransfer(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	s := newServer(t)
	target := filepath.Join(t.TempDir(), "large.bin")

	runtime.GC()
	debug.FreeOSMemory()
	// Writing 5 resets the peak RSS (VmHWM) to the current RSS.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset VmHWM: %v", err)
	}
	before := procStatus(t, "VmRSS")

	sent := sha256.New()
	body := io.TeeReader(prngStream(7, size), sent)
	req, err := http.NewRequest(http.MethodPost, s.query(target, ""), body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	code, resp, _ := s.do(t, req)
	if code != http.StatusOK {
		t.Fatalf("upload = %d %s", code, resp)
	}
	upDur := time.Since(start)
	if st, err := os.Stat(target); err != nil || st.Size() != size {
		t.Fatalf("uploaded file: %v, %v", st, err)
	}

	start = time.Now()
	res, err := s.client.Get(s.query(target, ""))
	if err != nil {
		t.Fatal(err)
	}
	if res.ContentLength != size {
		t.Errorf("Content-Length = %d, want %d", res.ContentLength, size)
	}
	got := sha256.New()
	n, err := io.CopyBuffer(writerOnly{got}, res.Body, make([]byte, 1<<20))
	_ = res.Body.Close()
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	downDur := time.Since(start)
	peak := procStatus(t, "VmHWM")

	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("sha256 of the downloaded file differs from the uploaded data")
	}
	growth := peak - before
	t.Logf("%d MiB: upload %.0f MB/s, download %.0f MB/s, RSS before %d MiB, peak %d MiB (growth %d MiB)",
		size>>20, float64(size)/1e6/upDur.Seconds(), float64(size)/1e6/downDur.Seconds(), before>>20, peak>>20, growth>>20)
	if growth >= 64<<20 {
		t.Fatalf("peak RSS grew by %d MiB during the transfer, want < 64 MiB", growth>>20)
	}
}

// tcpCopy sends size bytes over a fresh loopback TCP connection to a reader
// that discards them (sink == ""), or writes them to the file sink, with
// 1 MiB buffers on both sides: the baselines.
func tcpCopy(b *testing.B, block []byte, size int64, sink string) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer func() { _ = c.Close() }()
		w := io.Writer(io.Discard)
		if sink != "" {
			f, err := os.Create(sink)
			if err != nil {
				done <- err
				return
			}
			defer func() { _ = f.Close() }()
			w = f
		}
		n, err := io.CopyBuffer(writerOnly{w}, c, make([]byte, 1<<20))
		if err == nil && n != size {
			err = fmt.Errorf("baseline received %d of %d bytes", n, size)
		}
		done <- err
	}()
	start := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := newPattern(block, size).WriteTo(c); err != nil {
		b.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	_ = c.Close()
	return d
}

// BenchmarkFilesTransfer measures 1 GiB (64 MiB with -short) upload and
// download through /files over loopback next to a plain loopback TCP copy
// of the same size in the same run, and reports the ratios.
func BenchmarkFilesTransfer(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	s := newServer(b)
	target := filepath.Join(b.TempDir(), "bench.bin")
	block := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(block)
	buf := make([]byte, 1<<20)

	sink := filepath.Join(filepath.Dir(target), "baseline.bin")
	var tcp, tcpFile, up, down time.Duration
	iters := 0
	for b.Loop() {
		iters++
		tcp += tcpCopy(b, block, size, "")
		// Both file-writing phases start without a writeback backlog.
		unix.Sync()
		tcpFile += tcpCopy(b, block, size, sink)
		if err := os.Remove(sink); err != nil {
			b.Fatal(err)
		}

		// Each upload starts from an absent target, like the baselines.
		if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.Fatal(err)
		}
		unix.Sync()
		req, err := http.NewRequest(http.MethodPost, s.query(target, ""), newPattern(block, size))
		if err != nil {
			b.Fatal(err)
		}
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
		start := time.Now()
		res, err := s.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			b.Fatalf("upload status %d", res.StatusCode)
		}
		up += time.Since(start)

		start = time.Now()
		res, err = s.client.Get(s.query(target, ""))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(writerOnly{io.Discard}, res.Body, buf)
		_ = res.Body.Close()
		if err != nil || n != size {
			b.Fatalf("download: %d bytes, %v", n, err)
		}
		down += time.Since(start)
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(iters) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(tcp), "tcp_MB/s")
	b.ReportMetric(mbps(tcpFile), "tcp_to_file_MB/s")
	b.ReportMetric(mbps(up)/mbps(tcpFile), "upload/tcp_to_file")
	b.ReportMetric(mbps(up), "upload_MB/s")
	b.ReportMetric(mbps(down), "download_MB/s")
	b.ReportMetric(mbps(up)/mbps(tcp), "upload/tcp")
	b.ReportMetric(mbps(down)/mbps(tcp), "download/tcp")
}
