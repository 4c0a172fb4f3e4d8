package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// benchFlags are the flags of `wrenn bench`.
type benchFlags struct {
	client      clientFlags
	quick       bool
	asJSON      bool
	template    string
	memoryMB    int
	concurrency int
	fileMB      int
	iterations  int
	dir         string
	only        []string
}

// benchRow is one line of the report. Latencies are in ms; throughputs
// (Unit "MiB/s") report the median run as P50 and the slowest as P99.
type benchRow struct {
	Scenario string  `json:"scenario"`
	N        int     `json:"n"`
	Unit     string  `json:"unit"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	Baseline string  `json:"baseline,omitempty"`
	BaseP50  float64 `json:"baseline_p50,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	Note     string  `json:"note,omitempty"`
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running Wrenn: create, exec, files, PTY, pause/resume, delete, concurrent creates",
		Long: `Run the standard scenarios against a running Wrenn (the saved login, or
--url/--api-key) and print p50/p99 latencies and throughputs beside
baselines measured on this machine in the same run: a bare
"runc run /bin/true" (only as root with runc and busybox here, else n/a),
a local fork/exec, a pipe copied over loopback TCP, a loopback TCP copy
(into memory and into a file) and the disk's write rate.

Creates are "cold" when they ask for other limits than the warm pool holds
(memory 1 MB above the default) and "warm" otherwise; with an admin key
the report says how many warm creates the host's pool served. --quick
runs each scenario a few times (about a minute). Attach the output
(--json for machines) to performance bug reports.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.client.resolve()
			if err != nil {
				return err
			}
			c, err := f.client.client()
			if err != nil {
				return err
			}
			rows, err := runBench(cmd.Context(), c, cfg, f, cmd.ErrOrStderr())
			// What was measured is printed even when a scenario failed.
			if f.asJSON {
				if jerr := writeJSON(cmd.OutOrStdout(), rows); jerr != nil && err == nil {
					err = jerr
				}
			} else {
				printBench(cmd.OutOrStdout(), rows)
			}
			if err != nil {
				return friendly(err, c.BaseURL())
			}
			return nil
		},
	}
	addClientFlags(cmd, &f.client)
	fl := cmd.Flags()
	fl.BoolVar(&f.quick, "quick", false, "a short run (about a minute): few iterations, small files")
	fl.BoolVar(&f.asJSON, "json", false, "print the rows as JSON")
	fl.StringVar(&f.template, "template", limits.Defaults.Template, "template of the capsules")
	fl.IntVar(&f.memoryMB, "memory-mb", 256, "memory the pause/resume capsule fills before it is paused")
	fl.IntVar(&f.concurrency, "concurrency", 30, "capsules created at once in the concurrent-create scenario")
	fl.IntVar(&f.fileMB, "file-mb", 0, "size of the file and stream scenarios (default 256, 64 with --quick)")
	fl.IntVar(&f.iterations, "iterations", 0, "iterations of the latency scenarios (default 30, 8 with --quick)")
	fl.StringVar(&f.dir, "dir", os.TempDir(), "scratch directory of the local baselines (its disk is measured)")
	fl.StringSliceVar(&f.only, "only", nil, "run only these scenarios (comma-separated: create-cold, create-warm, in-capsule, pause, concurrent); the baselines always run")
	return cmd
}

// bench is one run's state.
type bench struct {
	c    *wrenn.Client
	cfg  clientConfig // URL and key, for GET /v1/admin/hosts
	hc   *http.Client
	f    benchFlags
	log  io.Writer
	rows []benchRow
	mu   sync.Mutex
	ids  map[string]bool // capsules to delete at the end
}

// benchScenarios are the names --only takes.
var benchScenarios = []string{"create-cold", "create-warm", "in-capsule", "pause", "concurrent"}

func runBench(ctx context.Context, c *wrenn.Client, cfg clientConfig, f benchFlags, log io.Writer) ([]benchRow, error) {
	for _, o := range f.only {
		if !slices.Contains(benchScenarios, o) {
			return nil, fmt.Errorf("--only: unknown scenario %q (one of %s)", o, strings.Join(benchScenarios, ", "))
		}
	}
	if f.iterations <= 0 {
		f.iterations = 30
		if f.quick {
			f.iterations = 8
		}
	}
	if f.fileMB <= 0 {
		f.fileMB = 256
		if f.quick {
			f.fileMB = 64
		}
	}
	if f.concurrency <= 0 || f.memoryMB <= 0 {
		return nil, errors.New("--concurrency and --memory-mb must be positive")
	}
	b := &bench{c: c, cfg: cfg, hc: &http.Client{Timeout: 10 * time.Second}, f: f, log: log, ids: map[string]bool{}}
	defer b.cleanup()
	if err := c.Health(ctx); err != nil {
		return nil, err
	}
	steps := []struct {
		key, name string
		fn        func(context.Context) error
	}{
		{"", "baselines", b.baselines},
		{"create-cold", "create cold", func(ctx context.Context) error { return b.createExec(ctx, false) }},
		{"create-warm", "create warm", func(ctx context.Context) error { return b.createExec(ctx, true) }},
		{"in-capsule", "exec, files, PTY", b.inCapsule},
		{"pause", "pause/resume", b.pauseResume},
		{"concurrent", "concurrent creates", b.concurrent},
	}
	want := map[string]bool{}
	for _, o := range f.only {
		want[o] = true
	}
	for _, s := range steps {
		if s.key != "" && len(want) > 0 && !want[s.key] {
			continue
		}
		fmt.Fprintf(log, "bench: %s…\n", s.name)
		if err := s.fn(ctx); err != nil {
			b.evaluate()
			return b.rows, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	b.evaluate()
	return b.rows, nil
}

func (b *bench) add(r benchRow) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rows = append(b.rows, r)
}

func (b *bench) row(name string) *benchRow {
	for i := range b.rows {
		if b.rows[i].Scenario == name {
			return &b.rows[i]
		}
	}
	return nil
}

// percentile of sorted ds (nearest rank), in ms.
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}

func latencyRow(name string, ds []time.Duration) benchRow {
	return benchRow{Scenario: name, N: len(ds), Unit: "ms", P50: percentile(ds, 50), P99: percentile(ds, 99)}
}

// rateRow: median and slowest of rates in MiB/s.
func rateRow(name string, rates []float64) benchRow {
	s := slices.Clone(rates)
	slices.Sort(s)
	if len(s) == 0 {
		return benchRow{Scenario: name, Unit: "MiB/s"}
	}
	return benchRow{Scenario: name, N: len(s), Unit: "MiB/s", P50: s[len(s)/2], P99: s[0]}
}

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// ---- baselines ----

func (b *bench) baselines(ctx context.Context) error {
	n := b.f.iterations
	var ds []time.Duration
	for range n {
		t0 := time.Now()
		if err := exec.CommandContext(ctx, "/bin/true").Run(); err != nil {
			return fmt.Errorf("local fork/exec: %w", err)
		}
		ds = append(ds, time.Since(t0))
	}
	b.add(latencyRow("baseline: local fork/exec /bin/true", ds))
	if r, err := b.runcBaseline(ctx, min(n, 10)); err != nil {
		b.add(benchRow{Scenario: "baseline: runc run /bin/true", Unit: "ms", Note: "n/a: " + err.Error()})
	} else {
		b.add(r)
	}
	size := int64(b.f.fileMB) << 20
	runs := 3
	if b.f.quick {
		runs = 2
	}
	type base struct {
		name string
		fn   func(context.Context, int64) (time.Duration, error)
	}
	for _, bs := range []base{
		{"baseline: pipe → loopback TCP copy", b.pipeTCP},
		{"baseline: loopback TCP copy", func(ctx context.Context, n int64) (time.Duration, error) { return tcpCopy(ctx, n, "") }},
		{"baseline: loopback TCP copy into a file", func(ctx context.Context, n int64) (time.Duration, error) { return tcpCopy(ctx, n, b.f.dir) }},
		{"baseline: disk write + fsync", b.diskWrite},
	} {
		var rates []float64
		for range runs {
			d, err := bs.fn(ctx, size)
			if err != nil {
				return fmt.Errorf("%s: %w", bs.name, err)
			}
			rates = append(rates, mibps(size, d))
		}
		b.add(rateRow(bs.name, rates))
	}
	return nil
}

// runcBaseline times `runc run` of busybox true in a minimal bundle.
func (b *bench) runcBaseline(ctx context.Context, n int) (benchRow, error) {
	if os.Geteuid() != 0 {
		return benchRow{}, errors.New("not root on this machine")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return benchRow{}, errors.New("no runc in PATH")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return benchRow{}, errors.New("no busybox in PATH")
	}
	dir, err := os.MkdirTemp(b.f.dir, "wrenn-bench-runc-")
	if err != nil {
		return benchRow{}, err
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		return benchRow{}, err
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return benchRow{}, err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil { //nolint:gosec // an executable
		return benchRow{}, err
	}
	if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", "true")); err != nil {
		return benchRow{}, err
	}
	if out, err := exec.CommandContext(ctx, runc, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return benchRow{}, fmt.Errorf("runc spec: %w: %s", err, out)
	}
	var spec map[string]any
	cfgPath := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return benchRow{}, err
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return benchRow{}, err
	}
	proc, _ := spec["process"].(map[string]any)
	if proc == nil {
		return benchRow{}, errors.New("runc spec has no process")
	}
	proc["terminal"] = false
	proc["args"] = []string{"/bin/true"}
	raw, _ = json.Marshal(spec)
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		return benchRow{}, err
	}
	root := filepath.Join(dir, "state")
	var ds []time.Duration
	for i := range n {
		id := fmt.Sprintf("wrenn-bench-%d-%d", os.Getpid(), i)
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, runc, "--root", root, "run", "--bundle", dir, id).CombinedOutput()
		ds = append(ds, time.Since(t0))
		if err != nil {
			_ = exec.Command(runc, "--root", root, "delete", "--force", id).Run()
			return benchRow{}, fmt.Errorf("runc run: %w: %s", err, bytes.TrimSpace(out))
		}
	}
	return latencyRow("baseline: runc run /bin/true", ds), nil
}

// tcpCopy copies n bytes from memory over loopback TCP; the reader
// discards them or, with dir, writes them into a file there.
func tcpCopy(ctx context.Context, n int64, dir string) (time.Duration, error) {
	return loopback(ctx, dir, func(conn net.Conn) error {
		_, err := io.CopyN(conn, zeroReader{}, n)
		return err
	})
}

// streamCmd prints n bytes of text lines (command output is text; NUL
// bytes would be escaped six-fold in the API's JSON events).
func streamCmd(n int64) string {
	return fmt.Sprintf("yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c %d", n)
}

// pipeTCP copies a child's stdout (streamCmd) over loopback TCP, like a
// capsule's stdout streamed to a client.
func (b *bench) pipeTCP(ctx context.Context, n int64) (time.Duration, error) {
	return loopback(ctx, "", func(conn net.Conn) error {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", streamCmd(n))
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		if _, err := io.Copy(conn, out); err != nil {
			_ = cmd.Wait()
			return err
		}
		return cmd.Wait()
	})
}

// loopback runs send against a fresh loopback TCP connection whose other
// end is drained (into a file in dir when dir is set) and times both.
func loopback(_ context.Context, dir string, send func(net.Conn) error) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan error, 1)
	t0 := time.Now()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		w := io.Discard
		if dir != "" {
			f, err := os.CreateTemp(dir, "wrenn-bench-")
			if err != nil {
				got <- err
				return
			}
			defer os.Remove(f.Name())
			defer f.Close()
			w = f
		}
		_, err = io.Copy(w, c)
		got <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	serr := send(conn)
	_ = conn.Close()
	rerr := <-got
	return time.Since(t0), errors.Join(serr, rerr)
}

func (b *bench) diskWrite(_ context.Context, n int64) (time.Duration, error) {
	f, err := os.CreateTemp(b.f.dir, "wrenn-bench-disk-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	t0 := time.Now()
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// ---- capsules ----

func (b *bench) create(ctx context.Context, warm bool, memoryMB int64) (*wrenn.Capsule, error) {
	p := wrenn.CreateParams{Template: b.f.template, Timeout: 10 * time.Minute}
	if !warm {
		// Other limits than the pool's: the host boots one.
		p.MemoryMB = limits.Defaults.MemoryMB + 1
	}
	if memoryMB > 0 {
		p.MemoryMB = memoryMB
	}
	c, err := b.c.Create(ctx, p)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.ids[c.ID] = true
	b.mu.Unlock()
	return c, nil
}

func (b *bench) delete(ctx context.Context, id string) (time.Duration, error) {
	t0 := time.Now()
	err := b.c.Delete(ctx, id)
	d := time.Since(t0)
	if err == nil || wrenn.IsNotFound(err) {
		b.mu.Lock()
		delete(b.ids, id)
		b.mu.Unlock()
		return d, nil
	}
	return d, err
}

func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b.mu.Lock()
	ids := make([]string, 0, len(b.ids))
	for id := range b.ids {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	for _, id := range ids {
		if _, err := b.delete(ctx, id); err != nil {
			fmt.Fprintf(b.log, "bench: could not delete %s: %v\n", id, err)
		}
	}
}

func (b *bench) execTrue(ctx context.Context, id string) error {
	res, err := b.c.Exec(ctx, id, wrenn.ExecRequest{Cmd: "/bin/true"})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("/bin/true exited %d", res.ExitCode)
	}
	return nil
}

// hosts lists the hosts (GET /v1/admin/hosts: platform admins only).
func (b *bench) hosts(ctx context.Context) ([]wrennapi.Host, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.cfg.URL, "/")+"/v1/admin/hosts", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-Key", b.cfg.APIKey)
	resp, err := b.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/admin/hosts: HTTP %d", resp.StatusCode)
	}
	var out wrennapi.HostList
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out.Hosts, nil
}

// poolHits is the warm-pool hits of the template over all hosts as
// reported after since (it waits up to 15 s for a heartbeat newer than
// since), or -1 when the key cannot list hosts.
func (b *bench) poolHits(ctx context.Context, since time.Time) int64 {
	deadline := time.Now().Add(15 * time.Second)
	for {
		hosts, err := b.hosts(ctx)
		if err != nil {
			return -1
		}
		fresh := true
		var n int64
		for _, h := range hosts {
			if h.Status == wrennapi.HostStatusOnline && (h.LastHeartbeatAt == nil || h.LastHeartbeatAt.Before(since)) {
				fresh = false
			}
			for _, p := range h.Capabilities.WarmPools {
				if p.Template == b.f.template {
					n += p.Hits
				}
			}
		}
		if fresh || time.Now().After(deadline) {
			return n
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// warmGap is the pause before each warm create: time for the pool to
// make a capsule again after the previous one (about 0.1–0.3 s here).
const warmGap = time.Second

// createExec: create → first exec, then delete (timed), cold or warm.
func (b *bench) createExec(ctx context.Context, warm bool) error {
	n := b.f.iterations
	if !warm {
		n = max(n/2, 3)
	}
	var ce, cr, fe, del, floor []time.Duration
	// The floor under a warm create → first exec, in the same conditions
	// (after the same pause, which on an idle host costs wake-ups): one
	// API call and one exec on a capsule that already runs.
	var running string
	if warm {
		c, err := b.create(ctx, true, 0)
		if err != nil {
			return err
		}
		running = c.ID
		if err := b.execTrue(ctx, running); err != nil {
			return err
		}
	}
	var hits0 int64
	if warm {
		hits0 = b.poolHits(ctx, time.Now())
	}
	for range n {
		if warm {
			time.Sleep(warmGap)
			t0 := time.Now()
			if _, err := b.c.Get(ctx, running); err != nil {
				return err
			}
			if err := b.execTrue(ctx, running); err != nil {
				return err
			}
			floor = append(floor, time.Since(t0))
			time.Sleep(warmGap)
		}
		t0 := time.Now()
		c, err := b.create(ctx, warm, 0)
		if err != nil {
			return err
		}
		t1 := time.Now()
		if err := b.execTrue(ctx, c.ID); err != nil {
			return err
		}
		ce = append(ce, time.Since(t0))
		cr, fe = append(cr, t1.Sub(t0)), append(fe, time.Since(t1))
		d, err := b.delete(ctx, c.ID)
		if err != nil {
			return err
		}
		del = append(del, d)
	}
	name := "create → first exec, cold"
	if warm {
		name = "create → first exec, warm"
	}
	r := latencyRow(name, ce)
	if warm {
		switch hits1 := b.poolHits(ctx, time.Now()); {
		case hits0 < 0 || hits1 < 0:
			r.Note = "pool use unknown (not an admin key)"
		default:
			r.Note = fmt.Sprintf("%d of %d from the warm pool", hits1-hits0, n)
		}
	}
	b.add(r)
	// The split: the create's answer, then the capsule's first exec.
	kind := "cold"
	if warm {
		kind = "warm"
	}
	b.add(latencyRow("  of which create (answer), "+kind, cr))
	b.add(latencyRow("  of which first exec, "+kind, fe))
	if warm {
		b.add(latencyRow("floor: API call + exec on a running capsule, after the same pause", floor))
		b.add(latencyRow("delete (answer)", del))
		if _, err := b.delete(ctx, running); err != nil {
			return err
		}
	}
	return nil
}

// inCapsule: exec round trips, stdout streaming, upload, download and
// PTY keystroke echo on one capsule.
func (b *bench) inCapsule(ctx context.Context) error {
	c, err := b.create(ctx, true, 0)
	if err != nil {
		return err
	}
	id := c.ID
	if err := b.execTrue(ctx, id); err != nil {
		return err
	}
	var ds []time.Duration
	for range b.f.iterations * 3 {
		t0 := time.Now()
		if err := b.execTrue(ctx, id); err != nil {
			return err
		}
		ds = append(ds, time.Since(t0))
	}
	b.add(latencyRow("exec /bin/true (API round trip)", ds))
	// The smallest authenticated API call (one capsule read): with the
	// exec above, the floor under a create → first exec.
	ds = ds[:0]
	for range b.f.iterations * 3 {
		t0 := time.Now()
		if _, err := b.c.Get(ctx, id); err != nil {
			return err
		}
		ds = append(ds, time.Since(t0))
	}
	b.add(latencyRow("floor: API round trip (GET capsule)", ds))

	size := int64(b.f.fileMB) << 20
	runs := 3
	if b.f.quick {
		runs = 2
	}
	var stream, floor, up, down []float64
	for range runs {
		// The floor inside the capsule: the same producer into a pipe
		// read by cat, on the capsule's own CPU (no envd, no network).
		t0f := time.Now()
		if _, err := b.c.Exec(ctx, id, wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", streamCmd(size) + " | cat > /dev/null"}}); err != nil {
			return err
		}
		floor = append(floor, mibps(size, time.Since(t0f)))

		var cw countWriter
		t0 := time.Now()
		st, err := b.c.ExecStream(ctx, id, wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", streamCmd(size)}}, &cw, io.Discard)
		d := time.Since(t0)
		if err != nil {
			return err
		}
		if st.ExitCode != 0 || cw.n != size {
			return fmt.Errorf("stream: exit %d, %d of %d bytes", st.ExitCode, cw.n, size)
		}
		stream = append(stream, mibps(size, d))

		t0 = time.Now()
		// Sized, as `wrenn capsule cp` sends a local file.
		if _, err := b.c.Files.WriteSized(ctx, id, "/tmp/wrenn-bench.bin", io.LimitReader(zeroReader{}, size), size); err != nil {
			return err
		}
		up = append(up, mibps(size, time.Since(t0)))

		t0 = time.Now()
		got, err := b.c.Files.Read(ctx, id, "/tmp/wrenn-bench.bin", io.Discard)
		if err != nil {
			return err
		}
		if got != size {
			return fmt.Errorf("download: %d of %d bytes", got, size)
		}
		down = append(down, mibps(size, time.Since(t0)))
	}
	b.add(rateRow("floor: producer → pipe inside the capsule", floor))
	b.add(rateRow("stdout streaming", stream))
	b.add(rateRow("file upload", up))
	b.add(rateRow("file download", down))

	pty, err := b.ptyEcho(ctx, id)
	if err != nil {
		return fmt.Errorf("pty: %w", err)
	}
	b.add(pty)
	_, err = b.delete(ctx, id)
	return err
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// ptyEcho times a keystroke's echo through a PTY running cat.
func (b *bench) ptyEcho(ctx context.Context, id string) (benchRow, error) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pty, err := b.c.OpenPTY(pctx, id, wrenn.PTYOptions{Cols: 80, Rows: 24, Cmd: "/bin/cat"})
	if err != nil {
		return benchRow{}, err
	}
	defer pty.Close()
	out := make(chan []byte, 64)
	go func() {
		defer close(out)
		buf := make([]byte, 4096)
		for {
			n, err := pty.Read(buf)
			if n > 0 {
				out <- bytes.Clone(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	wait := func(want byte) error {
		timer := time.NewTimer(10 * time.Second)
		defer timer.Stop()
		for {
			select {
			case b, ok := <-out:
				if !ok {
					return errors.New("terminal closed")
				}
				if bytes.IndexByte(b, want) >= 0 {
					return nil
				}
			case <-timer.C:
				return fmt.Errorf("no echo of %q", want)
			}
		}
	}
	// The first keystroke waits for cat to start.
	if _, err := pty.Write([]byte{'#'}); err != nil {
		return benchRow{}, err
	}
	if err := wait('#'); err != nil {
		return benchRow{}, err
	}
	var ds []time.Duration
	for i := range b.f.iterations * 3 {
		k := byte('a' + i%26)
		t0 := time.Now()
		if _, err := pty.Write([]byte{k}); err != nil {
			return benchRow{}, err
		}
		if err := wait(k); err != nil {
			return benchRow{}, err
		}
		ds = append(ds, time.Since(t0))
	}
	return latencyRow("PTY keystroke echo", ds), nil
}

// pauseResume fills memory-mb of memory (tmpfs) and times warm pause and
// resume, then pause to disk and resume → first exec.
func (b *bench) pauseResume(ctx context.Context) error {
	mem := int64(max(limits.Defaults.MemoryMB, int64(b.f.memoryMB)+256))
	c, err := b.create(ctx, false, mem)
	if err != nil {
		return err
	}
	id := c.ID
	// Anonymous memory held by a process (python3, in base), else a
	// tmpfs grown to fit (minimal): random bytes, so nothing is skipped
	// as zero pages.
	n := int64(b.f.memoryMB) << 20
	fill := fmt.Sprintf(`if command -v python3 >/dev/null; then
  python3 -c 'import os, time; b = os.urandom(%d); open("/tmp/wrenn-bench-filled", "w").close(); time.sleep(1e9)' >/dev/null 2>&1 &
  i=0; while [ ! -e /tmp/wrenn-bench-filled ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; test -e /tmp/wrenn-bench-filled
else
  mkdir -p /dev/shm && mount -o remount,size=%dm /dev/shm 2>/dev/null || mount -t tmpfs -o size=%dm tmpfs /dev/shm
  head -c %d /dev/urandom > /dev/shm/wrenn-bench-fill
fi`, n, b.f.memoryMB+64, b.f.memoryMB+64, n)
	res, err := b.c.Exec(ctx, id, wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", fill}, Timeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("fill memory: exit %d: %s", res.ExitCode, res.Stderr)
	}
	warmRuns, diskRuns := 5, 2
	if b.f.quick {
		warmRuns, diskRuns = 3, 1
	}
	var pause, resume, dpause, dresume []time.Duration
	for range warmRuns {
		t0 := time.Now()
		if _, err := b.c.Pause(ctx, id, wrenn.PauseOptions{}); err != nil {
			return err
		}
		pause = append(pause, time.Since(t0))
		t0 = time.Now()
		if _, err := b.c.Resume(ctx, id, 0); err != nil {
			return err
		}
		if err := b.execTrue(ctx, id); err != nil {
			return err
		}
		resume = append(resume, time.Since(t0))
	}
	b.add(latencyRow("warm pause", pause))
	b.add(latencyRow("warm resume → first exec", resume))
	kept := true
	for range diskRuns {
		t0 := time.Now()
		pc, err := b.c.Pause(ctx, id, wrenn.PauseOptions{ToDisk: true})
		if err != nil {
			return err
		}
		dpause = append(dpause, time.Since(t0))
		if pc.MemoryKept != nil && !*pc.MemoryKept {
			kept = false
		}
		t0 = time.Now()
		if _, err := b.c.Resume(ctx, id, 0); err != nil {
			return err
		}
		if err := b.execTrue(ctx, id); err != nil {
			return err
		}
		dresume = append(dresume, time.Since(t0))
	}
	r := latencyRow(fmt.Sprintf("pause to disk (%d MiB used)", b.f.memoryMB), dpause)
	if p := percentile(dpause, 50); p > 0 {
		r.Note = fmt.Sprintf("%.0f MiB/s of used memory", float64(b.f.memoryMB)/(p/1000))
	}
	if !kept {
		// Files only: the memory was not written; no rate to report.
		r.Note = "memory not kept (the host has no working CRIU): files only"
	}
	b.add(r)
	b.add(latencyRow(fmt.Sprintf("resume from disk → first exec (%d MiB)", b.f.memoryMB), dresume))
	_, err = b.delete(ctx, id)
	return err
}

// concurrent creates N capsules at once (create → first exec each).
func (b *bench) concurrent(ctx context.Context) error {
	n := b.f.concurrency
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ds   []time.Duration
		errs []error
		ids  []string
	)
	for range n {
		wg.Go(func() {
			t0 := time.Now()
			c, err := b.create(ctx, true, 0)
			if err == nil {
				err = b.execTrue(ctx, c.ID)
			}
			mu.Lock()
			defer mu.Unlock()
			if c != nil {
				ids = append(ids, c.ID)
			}
			if err != nil {
				errs = append(errs, err)
				return
			}
			ds = append(ds, time.Since(t0))
		})
	}
	wg.Wait()
	r := latencyRow(fmt.Sprintf("%d concurrent creates → first exec", n), ds)
	r.Note = fmt.Sprintf("%d of %d succeeded", len(ds), n)
	if len(errs) > 0 {
		r.Note += ": " + errs[0].Error()
	}
	b.add(r)
	var dwg sync.WaitGroup
	for _, id := range ids {
		dwg.Go(func() { _, _ = b.delete(ctx, id) })
	}
	dwg.Wait()
	return nil
}

// ---- report ----

// evaluate fills baselines, ratios and targets (issue 21).
func (b *bench) evaluate() {
	ok := func(v bool) *bool { return &v }
	vs := func(name, base string, target string, met func(r, base *benchRow) bool) {
		r, bs := b.row(name), b.row(base)
		if r == nil || r.N == 0 {
			return
		}
		r.Target = target
		if bs == nil || bs.N == 0 {
			if bs != nil {
				r.Baseline, r.Note = strings.TrimPrefix(bs.Scenario, "baseline: "), strings.TrimSpace(r.Note+" baseline n/a")
			}
			return
		}
		r.Baseline, r.BaseP50 = strings.TrimPrefix(bs.Scenario, "baseline: "), bs.P50
		if bs.P50 > 0 {
			r.Ratio = math.Round(r.P50/bs.P50*100) / 100
		}
		r.Met = ok(met(r, bs))
	}
	const (
		fork   = "baseline: local fork/exec /bin/true"
		runc   = "baseline: runc run /bin/true"
		pipe   = "baseline: pipe → loopback TCP copy"
		tcp    = "baseline: loopback TCP copy"
		tcpf   = "baseline: loopback TCP copy into a file"
		diskwr = "baseline: disk write + fsync"
	)
	vs("create → first exec, cold", runc, "≤ 1.2× runc run", func(r, bs *benchRow) bool { return r.P50 <= 1.2*bs.P50 })
	vs("create → first exec, warm", fork, "p50 ≤ 5 ms", func(r, _ *benchRow) bool { return r.P50 <= 5 })
	vs("exec /bin/true (API round trip)", fork, "≤ 1.5× fork/exec + 3 ms", func(r, bs *benchRow) bool { return r.P50 <= 1.5*bs.P50+3 })
	vs("stdout streaming", pipe, "≥ 0.9×", func(r, bs *benchRow) bool { return r.P50 >= 0.9*bs.P50 })
	vs("file download", tcp, "≥ 0.8×", func(r, bs *benchRow) bool { return r.P50 >= 0.8*bs.P50 })
	vs("file upload", tcpf, "≥ 0.8×", func(r, bs *benchRow) bool { return r.P50 >= 0.8*bs.P50 })
	// A create → first exec is at least one API call and one exec round
	// trip, measured on a running capsule in the same run and conditions.
	if r, f := b.row("create → first exec, warm"), b.row("floor: API call + exec on a running capsule, after the same pause"); r != nil && f != nil && r.N > 0 && f.N > 0 {
		r.Note = strings.TrimPrefix(r.Note+fmt.Sprintf("; %.1f× the floor (%.2f ms)", r.P50/f.P50, f.P50), "; ")
	}
	if r := b.row("delete (answer)"); r != nil && r.N > 0 {
		r.Target, r.Met = "p50 ≤ 20 ms", ok(r.P50 <= 20)
	}
	for i := range b.rows {
		r := &b.rows[i]
		switch {
		case strings.HasSuffix(r.Scenario, "concurrent creates → first exec"):
			r.Target, r.Met = "all succeed", ok(strings.HasPrefix(r.Note, fmt.Sprintf("%d of %d", b.f.concurrency, b.f.concurrency)))
		case strings.HasPrefix(r.Scenario, "pause to disk") && r.N > 0 && !strings.HasPrefix(r.Note, "memory not kept"):
			if bs := b.row(diskwr); bs != nil && bs.P50 > 0 {
				rate := float64(b.f.memoryMB) / (r.P50 / 1000)
				floor := min(1024, bs.P50)
				r.Baseline, r.BaseP50 = "disk write rate (MiB/s)", bs.P50
				r.Ratio = math.Round(rate/floor*100) / 100
				r.Target, r.Met = "≥ min(1 GiB/s, disk rate)", ok(rate >= floor)
			}
		case strings.HasPrefix(r.Scenario, "resume from disk") && r.N > 0 && b.f.memoryMB >= 1024:
			r.Target, r.Met = "≤ 300 ms at 1 GiB", ok(r.P50 <= 300)
		}
	}
}

func printBench(w io.Writer, rows []benchRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tN\tP50\tP99\tBASELINE\tBASE P50\tRATIO\tTARGET\tMET\tNOTE")
	num := func(v float64, unit string) string {
		if v == 0 {
			return "-"
		}
		if unit == "MiB/s" {
			return fmt.Sprintf("%.0f MiB/s", v)
		}
		return fmt.Sprintf("%.2f ms", v)
	}
	for _, r := range rows {
		ratio, met, base := "-", "-", "-"
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*r.Met]
		}
		if r.Baseline != "" {
			base = r.Baseline
		}
		baseUnit := r.Unit
		if strings.HasPrefix(r.Scenario, "pause to disk") {
			baseUnit = "MiB/s"
		}
		p99 := num(r.P99, r.Unit)
		if r.Unit == "MiB/s" && r.N > 0 {
			p99 += " (min)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.N, num(r.P50, r.Unit), p99, base,
			num(r.BaseP50, baseUnit), ratio, orDash(r.Target), met, r.Note)
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
