package controlplane_test

import (
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// lifecycleBenchCP is lifecycleCP for a benchmark; it returns the agent's
// directory too.
func lifecycleBenchCP(b *testing.B, subnet string) (c *cp, tok, dir string) {
	b.Helper()
	testutil.RequireRoot(b)
	st := apitest.SQLite(b)
	c = startCP(b, st, func(cfg *controlplane.Config) { cfg.LifecycleInterval = 200 * time.Millisecond })
	ctx := testutil.Context(b, testutil.Long)
	adminTok, adminID, _ := c.signup("lcb-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		b.Fatal(err)
	}
	hostID, _ := startAgentOn(b, c, adminTok, netip.MustParsePrefix(subnet))
	d, _ := agentDirs.Load(hostID)
	tok, _, _ = c.signup("lcb-user@example.com")
	return c, tok, d.(string)
}

// diskBytes is the space the files under dir take (allocated blocks, so
// sparse images count what they hold).
func diskBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += statBlocks(fi)
		}
		return nil
	})
	return n
}

// BenchmarkAutoResumeFirstByte: a hibernated capsule with auto_resume and
// a web server; the time from an HTTP request through the port proxy to
// its answer (the resume included), against the same-run baseline of an
// explicit POST …/resume followed by the same request.
func BenchmarkAutoResumeFirstByte(b *testing.B) {
	c, tok, _ := lifecycleBenchCP(b, "10.83.0.0/16")
	m := c.call("POST", "/v1/capsules", tok, map[string]any{"template": "minimal", "memory_mb": 256, "timeout_sec": 3600, "auto_resume": true}, 201).obj(b)
	id, token := m["id"].(string), m["access_token"].(string)
	c.call("PUT", "/v1/capsules/"+id+"/files?path=/tmp/www/index.html", tok, []byte("awake"), 200)
	c.call("POST", "/v1/capsules/"+id+"/processes", tok, map[string]any{"cmd": "httpd", "args": []string{"-f", "-p", "8000", "-h", "/tmp/www"}}, 201)
	url := "/proxy/" + id + "/8000/index.html?wrenn_access_token=" + token
	testutil.Eventually(b, 20*time.Second, func() bool { return c.callProxy("GET", url, "", 0).status == 200 }, "web server")
	pause := func() { c.call("POST", "/v1/capsules/"+id+"/pause", tok, map[string]any{"to_disk": true}, 200) }

	const baseRounds = 3
	var base time.Duration
	for range baseRounds {
		pause()
		start := time.Now()
		c.call("POST", "/v1/capsules/"+id+"/resume", tok, nil, 200)
		c.callProxy("GET", url, "", 200)
		base += time.Since(start)
	}
	var auto time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		pause()
		b.StartTimer()
		start := time.Now()
		c.callProxy("GET", url, "", 200)
		auto += time.Since(start)
	}
	autoMs := float64(auto.Milliseconds()) / float64(b.N)
	baseMs := float64(base.Milliseconds()) / baseRounds
	b.ReportMetric(autoMs, "auto_resume_first_byte_ms")
	b.ReportMetric(baseMs, "explicit_resume+request_ms")
	b.ReportMetric(autoMs/baseMs, "auto_vs_explicit")
}

// BenchmarkFork: a capsule holding 200 MiB of touched (random) memory
// forked into 5 copies: the fork's total time and the bytes it added to
// the host's disk (the shared base + the copies), against the same-run
// baseline of 5 such capsules each paused to disk (what 5 independent
// pauses store). Goal: fork bytes ≤ 1.2× one pause.
func BenchmarkFork(b *testing.B) {
	if os.Getenv("WRENN_TEST_CRIU") == "" {
		b.Fatal("BenchmarkFork measures memory: set WRENN_TEST_CRIU=$(scripts/criu.sh)")
	}
	c, tok, dir := lifecycleBenchCP(b, "10.84.0.0/16")
	const mib = 200
	touched := func() string {
		id := c.call("POST", "/v1/capsules", tok, map[string]any{"template": "minimal", "memory_mb": 1024, "timeout_sec": 3600}, 201).obj(b)["id"].(string)
		// 200 MiB of random bytes held by a process (incompressible, no
		// zero blocks to skip).
		c.call("POST", "/v1/capsules/"+id+"/processes", tok, map[string]any{"cmd": "sh", "args": []string{
			"-c",
			"x=$(head -c " + strconv.Itoa(mib*1024*1024*3/4) + " /dev/urandom | base64 -w0); echo ok > /tmp/ready; while :; do sleep 1; done",
		}}, 201)
		testutil.Eventually(b, 2*time.Minute, func() bool {
			r := c.call("POST", "/v1/capsules/"+id+"/exec", tok, map[string]any{"cmd": "cat", "args": []string{"/tmp/ready"}}, 0)
			return r.status == 200 && r.obj(b)["exit_code"] == float64(0)
		}, "memory touched")
		return id
	}

	// Baseline: 5 independent pauses to disk.
	ids := make([]string, 5)
	for i := range ids {
		ids[i] = touched()
	}
	before := diskBytes(dir)
	start := time.Now()
	for _, id := range ids {
		if m := c.call("POST", "/v1/capsules/"+id+"/pause", tok, map[string]any{"to_disk": true}, 200).obj(b); m["memory_kept"] != true {
			b.Fatalf("pause did not keep memory: %v", m)
		}
	}
	pauseTime := time.Since(start)
	pauseBytes := diskBytes(dir) - before
	for _, id := range ids {
		c.call("DELETE", "/v1/capsules/"+id, tok, nil, 204)
	}

	// Same-run baseline of a capsule's own disk (image, state): the
	// copies each have theirs whatever they share.
	before = diskBytes(dir)
	fresh := c.call("POST", "/v1/capsules", tok, map[string]any{"template": "minimal", "memory_mb": 1024, "timeout_sec": 3600}, 201).obj(b)["id"].(string)
	freshBytes := diskBytes(dir) - before
	c.call("DELETE", "/v1/capsules/"+fresh, tok, nil, 204)

	orig := touched()
	kept := true
	var forkTime time.Duration
	var forkBytes int64
	b.ResetTimer()
	for b.Loop() {
		before := diskBytes(dir)
		start := time.Now()
		res := c.call("POST", "/v1/capsules/"+orig+"/fork", tok, map[string]any{"count": 5}, 201).obj(b)
		forkTime += time.Since(start)
		b.StopTimer()
		forkBytes += diskBytes(dir) - before
		kept = kept && res["memory_kept"] == true
		for _, cp := range res["capsules"].([]any) {
			c.call("DELETE", "/v1/capsules/"+cp.(map[string]any)["id"].(string), tok, nil, 204)
		}
		c.call("DELETE", "/v1/templates/"+res["base_template_id"].(string), tok, nil, 0)
		b.StartTimer()
	}
	n := float64(b.N)
	onePause := float64(pauseBytes) / 5
	b.ReportMetric(forkTime.Seconds()/n, "fork_x5_s")
	b.ReportMetric(pauseTime.Seconds(), "5_pauses_s")
	b.ReportMetric(float64(forkBytes)/n/(1<<20), "fork_x5_MiB")
	b.ReportMetric(float64(pauseBytes)/(1<<20), "5_pauses_MiB")
	b.ReportMetric(float64(forkBytes)/n/onePause, "fork_vs_one_pause")
	b.ReportMetric(float64(freshBytes)/(1<<20), "one_fresh_capsule_MiB")
	b.ReportMetric((float64(forkBytes)/n-5*float64(freshBytes))/onePause, "fork_minus_5_fresh_vs_one_pause")
	if !kept {
		b.Logf("the copies booted from the files: their host could not restore the checkpoint (memory templates, issue 16)")
	}
}

// statBlocks is the bytes a file's allocated blocks take.
func statBlocks(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
