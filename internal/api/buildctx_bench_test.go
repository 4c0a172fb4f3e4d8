package api_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// writeContextTar writes a build context of size bytes (four regular
// files) as a tar stream, generated as it goes (nothing held in memory).
func writeContextTar(w io.Writer, size int64) error {
	tw := tar.NewWriter(w)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for i := range 4 {
		if err := tw.WriteHeader(&tar.Header{Name: "big" + string(rune('a'+i)), Typeflag: tar.TypeReg, Mode: 0o644, Size: size / 4}); err != nil {
			return err
		}
		for range size / 4 / int64(len(chunk)) {
			if _, err := tw.Write(chunk); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// heapPeak samples HeapInuse every 10 ms until stop is called, which
// returns the peak growth over the value before start.
func heapPeak() (stop func() int64) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	peak := before.HeapInuse
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-quit:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(quit)
		<-done
		return int64(peak) - int64(before.HeapInuse)
	}
}

// BenchmarkBuildContextUpload streams a 1 GiB build context (256 MiB
// with -short) through POST /v1/templates/builds — multipart over HTTP,
// the API's part-by-part reader, builds.SaveContext's tar checks, into a
// file in BuildDir — with the real build runner taking the build (it then
// fails for want of a host). Same-run baseline: the same generated tar
// stream written straight to a file in the same directory (and synced, as
// SaveContext does). Reported:
// upload_MBps and file_MBps, upload_vs_file (time ratio), and the peak
// heap growth of each (heap_MiB, file_heap_MiB): the upload is streamed,
// never held in memory, so its heap growth stays a few MiB.
//
//	go test -run '^$' -bench BenchmarkBuildContextUpload -benchtime 1x ./internal/api/
func BenchmarkBuildContextUpload(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	st := apitest.Stores()[0].Open(b)
	runner := builds.New(builds.Config{Store: st, Scheduler: scheduler.New(st), PollInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { runner.Run(ctx, time.Hour); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(b, 5*time.Second, runner.Running, "runner did not start")
	dir := b.TempDir()
	e := newEnv(b, st, func(c *api.Config, _ string) {
		c.Builds = runner
		c.BuildDir = dir
	})
	user := e.signup("bench-context@example.com")
	mb := float64(size) / (1 << 20)

	var upload, file time.Duration
	var upHeap, fileHeap int64
	for i := 0; b.Loop(); i++ {
		// Baseline: the same bytes to a file on the same disk.
		f, err := os.Create(filepath.Join(dir, "baseline.tar"))
		if err != nil {
			b.Fatal(err)
		}
		stop := heapPeak()
		t0 := time.Now()
		err = writeContextTar(f, size)
		if err == nil {
			err = f.Sync() // SaveContext syncs too
		}
		if err == nil {
			err = f.Close()
		}
		file += time.Since(t0)
		fileHeap = max(fileHeap, stop())
		if err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(f.Name())

		// The upload: a multipart body generated while it is sent.
		pr, pw := io.Pipe()
		mw := multipart.NewWriter(pw)
		go func() {
			err := mw.WriteField("name", "ctx"+string(rune('a'+i%26))+time.Now().Format("150405.000000"))
			if err == nil {
				err = mw.WriteField("recipe", "FROM minimal\nCOPY . /srv/\n")
			}
			var w io.Writer
			if err == nil {
				w, err = mw.CreateFormFile("context", "context.tar")
			}
			if err == nil {
				err = writeContextTar(w, size)
			}
			if err == nil {
				err = mw.Close()
			}
			pw.CloseWithError(err)
		}()
		req, err := http.NewRequestWithContext(context.Background(), "POST", e.srv.URL+"/v1/templates/builds", pr)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", mw.FormDataContentType())
		req.Header.Set("Authorization", "Bearer "+user.token)
		stop = heapPeak()
		t0 = time.Now()
		res, err := http.DefaultClient.Do(req)
		upload += time.Since(t0)
		upHeap = max(upHeap, stop())
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.StatusCode != http.StatusCreated {
			b.Fatalf("upload: %d %s", res.StatusCode, body)
		}
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mb*n/upload.Seconds(), "upload_MBps")
	b.ReportMetric(mb*n/file.Seconds(), "file_MBps")
	b.ReportMetric(upload.Seconds()/file.Seconds(), "upload_vs_file")
	b.ReportMetric(float64(upHeap)/(1<<20), "heap_MiB")
	b.ReportMetric(float64(fileHeap)/(1<<20), "file_heap_MiB")
	b.ReportMetric(mb, "context_MiB")
}
