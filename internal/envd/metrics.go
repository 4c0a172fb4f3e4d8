package envd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MetricsConfig says where /metrics reads the capsule's state from. The
// defaults are the real locations; tests point them at fixtures.
type MetricsConfig struct {
	ProcDir   string // default /proc
	CgroupDir string // default /sys/fs/cgroup
	DiskPath  string // default /
	// SampleInterval of the CPU sampler (default 1 s).
	SampleInterval time.Duration
}

func (c *MetricsConfig) fill() {
	if c.ProcDir == "" {
		c.ProcDir = "/proc"
	}
	if c.CgroupDir == "" {
		c.CgroupDir = "/sys/fs/cgroup"
	}
	if c.DiskPath == "" {
		c.DiskPath = "/"
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = time.Second
	}
}

// Metrics is the /metrics body. Memory is guest-side: used = total - available
// (inside a memory-limited cgroup: the limit and the cgroup's usage without
// reclaimable file cache).
type Metrics struct {
	TS          int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskTotal   uint64  `json:"disk_total"`
	DiskUsed    uint64  `json:"disk_used"`
}

type metricsReader struct {
	cfg MetricsConfig

	mu      sync.Mutex
	cpuPct  float64
	prevCPU cpuSample
}

type cpuSample struct {
	busy float64 // seconds of CPU time used
	at   time.Time
	ok   bool
}

func newMetricsReader(cfg MetricsConfig) *metricsReader {
	cfg.fill()
	return &metricsReader{cfg: cfg}
}

func (m *metricsReader) run(ctx context.Context) {
	m.sampleCPU()
	t := time.NewTicker(m.cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.sampleCPU()
		}
	}
}

func (m *metricsReader) sampleCPU() {
	busy, err := m.cpuBusySeconds()
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		return
	}
	if m.prevCPU.ok {
		wall := now.Sub(m.prevCPU.at).Seconds() * float64(m.cpuCount())
		if wall > 0 {
			pct := (busy - m.prevCPU.busy) / wall * 100
			m.cpuPct = math.Max(0, math.Min(100, pct))
		}
	}
	m.prevCPU = cpuSample{busy: busy, at: now, ok: true}
}

// cpuBusySeconds returns CPU seconds used: the cgroup's usage when envd runs
// in a cgroup-limited capsule, else the whole system's non-idle time.
func (m *metricsReader) cpuBusySeconds() (float64, error) {
	// cgroup v2
	if b, err := os.ReadFile(filepath.Join(m.cfg.CgroupDir, "cpu.stat")); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, err := strconv.ParseFloat(v, 64)
				if err == nil {
					return us / 1e6, nil
				}
			}
		}
	}
	// cgroup v1
	for _, p := range []string{"cpuacct/cpuacct.usage", "cpu,cpuacct/cpuacct.usage"} {
		if b, err := os.ReadFile(filepath.Join(m.cfg.CgroupDir, p)); err == nil {
			ns, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			if err == nil {
				return ns / 1e9, nil
			}
		}
	}
	return procStatBusy(filepath.Join(m.cfg.ProcDir, "stat"))
}

func procStatBusy(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, errors.New("empty /proc/stat")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, errors.New("malformed /proc/stat")
	}
	var busy float64
	for i, f := range fields[1:] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc/stat: %w", err)
		}
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += v
	}
	return busy / 100, nil // USER_HZ is 100 on Linux
}

// cpuCount is the number of CPUs the capsule may use: the cgroup quota
// rounded up when one is set, else the CPUs envd may run on.
func (m *metricsReader) cpuCount() int {
	n := runtime.NumCPU()
	quota, period := -1.0, 0.0
	if b, err := os.ReadFile(filepath.Join(m.cfg.CgroupDir, "cpu.max")); err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 && f[0] != "max" {
			quota, _ = strconv.ParseFloat(f[0], 64)
			period, _ = strconv.ParseFloat(f[1], 64)
		}
	} else {
		for _, dir := range []string{"cpu", "cpu,cpuacct"} {
			q, err1 := os.ReadFile(filepath.Join(m.cfg.CgroupDir, dir, "cpu.cfs_quota_us"))
			p, err2 := os.ReadFile(filepath.Join(m.cfg.CgroupDir, dir, "cpu.cfs_period_us"))
			if err1 == nil && err2 == nil {
				quota, _ = strconv.ParseFloat(strings.TrimSpace(string(q)), 64)
				period, _ = strconv.ParseFloat(strings.TrimSpace(string(p)), 64)
				break
			}
		}
	}
	if quota > 0 && period > 0 {
		if c := int(math.Ceil(quota / period)); c < n {
			n = c
		}
	}
	return max(n, 1)
}

type memInfo struct {
	total, available, cached uint64
}

func readMemInfo(path string) (memInfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return memInfo{}, err
	}
	var mi memInfo
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		n *= 1024
		switch string(k) {
		case "MemTotal":
			mi.total = n
		case "MemAvailable":
			mi.available = n
		case "Cached":
			mi.cached = n
		}
	}
	if mi.total == 0 {
		return mi, errors.New("no MemTotal in " + path)
	}
	return mi, nil
}

// cgroupMemory returns the cgroup's limit, usage without inactive file
// cache, and file cache, when the capsule has a memory limit below total.
func (m *metricsReader) cgroupMemory() (limit, used, cache uint64, ok bool) {
	readU := func(p string) (uint64, bool) {
		b, err := os.ReadFile(filepath.Join(m.cfg.CgroupDir, p))
		if err != nil {
			return 0, false
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return v, err == nil
	}
	stat := func(p string) map[string]uint64 {
		out := map[string]uint64{}
		b, err := os.ReadFile(filepath.Join(m.cfg.CgroupDir, p))
		if err != nil {
			return out
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 {
				if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
					out[f[0]] = v
				}
			}
		}
		return out
	}
	if l, okL := readU("memory.max"); okL { // v2
		u, okU := readU("memory.current")
		if !okU {
			return 0, 0, 0, false
		}
		st := stat("memory.stat")
		inactive := min(st["inactive_file"], u)
		return l, u - inactive, st["file"], true
	}
	if l, okL := readU("memory/memory.limit_in_bytes"); okL { // v1
		u, okU := readU("memory/memory.usage_in_bytes")
		if !okU {
			return 0, 0, 0, false
		}
		st := stat("memory/memory.stat")
		inactive := min(st["total_inactive_file"], u)
		return l, u - inactive, st["total_cache"], true
	}
	return 0, 0, 0, false
}

func (m *metricsReader) read() (Metrics, error) {
	mi, err := readMemInfo(filepath.Join(m.cfg.ProcDir, "meminfo"))
	if err != nil {
		return Metrics{}, err
	}
	out := Metrics{
		TS:       time.Now().Unix(),
		CPUCount: m.cpuCount(),
		MemTotal: mi.total,
		MemUsed:  mi.total - min(mi.available, mi.total),
		MemCache: mi.cached,
	}
	if limit, used, cache, ok := m.cgroupMemory(); ok && limit < mi.total {
		out.MemTotal, out.MemUsed, out.MemCache = limit, min(used, limit), cache
	}
	out.MemTotalMiB, out.MemUsedMiB = out.MemTotal>>20, out.MemUsed>>20
	var st unix.Statfs_t
	if err := unix.Statfs(m.cfg.DiskPath, &st); err == nil {
		bs := uint64(st.Bsize) //nolint:gosec // block size is positive
		out.DiskTotal = st.Blocks * bs
		out.DiskUsed = (st.Blocks - st.Bfree) * bs
	}
	m.mu.Lock()
	out.CPUUsedPct = math.Round(m.cpuPct*100) / 100
	m.mu.Unlock()
	return out, nil
}

func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	mt, err := s.metrics.read()
	if err != nil {
		s.log.Warn("metrics unavailable", "err", err)
		writeError(w, http.StatusInternalServerError, "metrics unavailable")
		return
	}
	writeJSON(w, http.StatusOK, mt)
}
