package relay_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/relay"
)

// zeros reads n zero bytes (a streamed body of no known length type).
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), z.n))
	clear(p[:k])
	z.n -= int64(k)
	return k, nil
}

var pool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

type bufs struct{}

func (bufs) Get() []byte  { return *pool.Get().(*[]byte) }
func (bufs) Put(b []byte) { pool.Put(&b) }

// proxyHop is a hop as the envd route's: a reverse proxy with 1 MiB copy
// and transport buffers, full duplex.
func proxyHop(b *testing.B, target string) *httptest.Server {
	u, _ := url.Parse(target)
	rp := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:  &http.Transport{WriteBufferSize: 1 << 20, ReadBufferSize: 1 << 20},
		BufferPool: bufs{},
	}
	s := httptest.NewServer(relay.FullDuplex(rp, nil))
	b.Cleanup(s.Close)
	return s
}

// BenchmarkTransfer measures a large upload and download (BENCH_MIB,
// default 1024) on loopback, directly and through two reverse-proxy hops
// configured as the envd route's (1 MiB buffers, full duplex), and
// reports each as MiB/s and the ratio to the direct transfer of the same
// run: the cost of the two hops with nothing else in the way (no capsule
// network, no rate limit).
//
//	go test -run '^$' -bench BenchmarkTransfer -benchtime 1x ./internal/relay/
func BenchmarkTransfer(b *testing.B) {
	mib := int64(1024)
	if s := os.Getenv("BENCH_MIB"); s != "" {
		mib, _ = strconv.ParseInt(s, 10, 64)
	}
	size := mib << 20
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		_, _ = io.Copy(w, &zeros{size})
	}))
	b.Cleanup(upstream.Close)
	routes := []struct{ name, url string }{
		{"direct", upstream.URL},
		{"proxied", proxyHop(b, proxyHop(b, upstream.URL).URL).URL},
	}
	rate := func(f func() error) float64 {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return float64(mib) / time.Since(start).Seconds()
	}
	for range b.N {
		got := map[string][2]float64{}
		for _, r := range routes {
			up := rate(func() error {
				req, _ := http.NewRequest(http.MethodPost, r.url+"/files", &zeros{size})
				req.ContentLength = size
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				return err
			})
			down := rate(func() error {
				resp, err := http.Get(r.url + "/files")
				if err != nil {
					return err
				}
				defer func() { _ = resp.Body.Close() }()
				n, err := io.Copy(io.Discard, resp.Body)
				if err == nil && n != size {
					err = io.ErrUnexpectedEOF
				}
				return err
			})
			got[r.name] = [2]float64{up, down}
			b.ReportMetric(up, r.name+"_upload_MiB/s")
			b.ReportMetric(down, r.name+"_download_MiB/s")
		}
		for _, n := range []string{"proxied"} {
			b.ReportMetric(got[n][0]/got["direct"][0], n+"_upload_ratio")
			b.ReportMetric(got[n][1]/got["direct"][1], n+"_download_ratio")
		}
	}
}
