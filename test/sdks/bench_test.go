package sdks

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
)

// BenchmarkSDKs measures, against one `wrenn up` and in the same run:
//
//   - create → first exec (POST /v1/capsules, POST …/exec "true") through the
//     Python and TypeScript SDKs, timed inside the SDK's process, against the
//     same two calls made with raw HTTP (Go net/http): ratio = median SDK /
//     median raw (target ≤ 1.2);
//   - file upload and download (PUT/GET …/files) through each SDK against
//     curl on the same capsule: ratio = curl's time / the SDK's time, best of
//     3 each (target ≥ 0.8).
//
// The file is 256 MiB; WRENN_SDK_BENCH_MIB=1024 runs it with 1 GiB.
func BenchmarkSDKs(b *testing.B) {
	u := server(b)
	requirePython(b)
	requireNode(b)
	for i := 0; i < b.N; i++ {
		benchCreateExec(b, u)
		benchFiles(b, u)
	}
}

type raw struct {
	u  *up
	hc *http.Client
}

func (r raw) call(method, path, body string) []byte {
	req, _ := http.NewRequest(method, r.u.url+path, bytes.NewBufferString(body))
	req.Header.Set("X-API-Key", r.u.key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		panic(fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, out))
	}
	return out
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

type benchOut struct {
	Seconds json.RawMessage `json:"seconds"`
}

func sdkTimes(b *testing.B, u *up, lang string, args ...string) []float64 {
	b.Helper()
	var out string
	switch lang {
	case "python":
		out = run(b, pyDir, u.env(), python, append([]string{"bench/bench.py"}, args...)...)
	case "typescript":
		out = run(b, tsDir, u.env(), "node", append([]string{"bench/bench.mjs"}, args...)...)
	}
	var o benchOut
	if err := json.Unmarshal(bytes.TrimSpace([]byte(lastLines(out, 1))), &o); err != nil {
		b.Fatalf("%s bench output %q: %v", lang, out, err)
	}
	var v []float64
	if json.Unmarshal(o.Seconds, &v) != nil {
		var one float64
		if err := json.Unmarshal(o.Seconds, &one); err != nil {
			b.Fatal(err)
		}
		v = []float64{one}
	}
	return v
}

func benchCreateExec(b *testing.B, u *up) {
	r := raw{u: u, hc: &http.Client{}}
	// Two rounds of five creates per client, interleaved, so the machine's
	// load drifts over all three alike. Each SDK process first makes one
	// untimed create→exec (connection, interpreter warm-up), as the raw
	// client's kept-alive connection is warm after its first call.
	const n = 5
	var rawT, pyT, tsT []float64
	for round := 0; round < 2; round++ {
		for i := 0; i < n; i++ {
			t0 := time.Now()
			var c struct{ ID string }
			_ = json.Unmarshal(r.call("POST", "/v1/capsules", `{"template":"minimal"}`), &c)
			r.call("POST", "/v1/capsules/"+c.ID+"/exec", `{"cmd":"true"}`)
			rawT = append(rawT, time.Since(t0).Seconds())
			r.call("DELETE", "/v1/capsules/"+c.ID, "")
		}
		pyT = append(pyT, sdkTimes(b, u, "python", "create-exec", strconv.Itoa(n), "minimal")...)
		tsT = append(tsT, sdkTimes(b, u, "typescript", "create-exec", strconv.Itoa(n), "minimal")...)
	}
	mr, mp, mt := median(rawT), median(pyT), median(tsT)
	b.ReportMetric(mr*1000, "raw-create-exec-ms")
	b.ReportMetric(mp/mr, "python/raw-create-exec")
	b.ReportMetric(mt/mr, "ts/raw-create-exec")
	b.Logf("create→first exec, median of %d: raw HTTP %.1f ms, Python SDK %.1f ms (ratio %.2f), TypeScript SDK %.1f ms (ratio %.2f); target ≤ 1.2",
		len(rawT), mr*1000, mp*1000, mp/mr, mt*1000, mt/mr)
}

func benchFiles(b *testing.B, u *up) {
	mib := 256
	if s := os.Getenv("WRENN_SDK_BENCH_MIB"); s != "" {
		mib, _ = strconv.Atoi(s)
	}
	dir := b.TempDir()
	local := filepath.Join(dir, "up.bin")
	f, err := os.Create(local)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, int64(mib)<<20); err != nil {
		b.Fatal(err)
	}
	_ = f.Close()
	r := raw{u: u, hc: &http.Client{}}
	var c struct{ ID string }
	_ = json.Unmarshal(r.call("POST", "/v1/capsules", fmt.Sprintf(`{"template":"minimal","disk_size_mb":%d,"timeout_sec":3600}`, 2*mib+2048)), &c)
	defer r.call("DELETE", "/v1/capsules/"+c.ID, "")
	files := u.url + "/v1/capsules/" + c.ID + "/files?path="
	curl := func(args ...string) float64 {
		out, err := exec.Command("curl", append([]string{"-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", "-H", "X-API-Key: " + u.key}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("curl %v: %v %s", args, err, out)
		}
		v, _ := strconv.ParseFloat(string(bytes.TrimSpace(out)), 64)
		return v
	}
	best := map[string]float64{}
	keep := func(k string, v float64) {
		if old, ok := best[k]; !ok || v < old {
			best[k] = v
		}
	}
	down := filepath.Join(dir, "down.bin")
	for round := 0; round < 3; round++ {
		keep("curl-up", curl("-T", local, files+"/root/c.bin"))
		keep("curl-down", curl(files+"/root/c.bin"))
		r.call("DELETE", "/v1/capsules/"+c.ID+"/files?path=/root/c.bin", "")
		for _, lang := range []string{"python", "typescript"} {
			keep(lang+"-up", sdkTimes(b, u, lang, "upload", c.ID, local, "/root/s.bin")[0])
			keep(lang+"-down", sdkTimes(b, u, lang, "download", c.ID, "/root/s.bin", down)[0])
			if st, err := os.Stat(down); err != nil || st.Size() != int64(mib)<<20 {
				b.Fatalf("%s download: %v, %d bytes", lang, err, st.Size())
			}
			r.call("DELETE", "/v1/capsules/"+c.ID+"/files?path=/root/s.bin", "")
		}
	}
	mbps := func(s float64) float64 { return float64(mib) / s }
	for _, dirn := range []string{"up", "down"} {
		cu := best["curl-"+dirn]
		for _, lang := range []string{"python", "typescript"} {
			s := best[lang+"-"+dirn]
			b.ReportMetric(cu/s, lang+"/curl-"+dirn+"load")
			b.Logf("%d MiB %sload, best of 3: curl %.0f MiB/s, %s SDK %.0f MiB/s (ratio %.2f); target ≥ 0.8",
				mib, dirn, mbps(cu), lang, mbps(s), cu/s)
		}
	}
}
