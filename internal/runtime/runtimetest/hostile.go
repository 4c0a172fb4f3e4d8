package runtimetest

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// WithHelper gives RunHostile the host path of a static build of
// ./internal/runtime/runtimetest/hostilehelper for the capsule's
// architecture (the driver's TestMain builds it, as it builds envd).
func WithHelper(path string) Option { return func(o *options) { o.helper = path } }

// WithHostState gives RunHostile a function that describes the host
// objects a driver could leak (mounts, namespaces, cgroups, processes...),
// one object per line; it is called before the suite and after every
// capsule and driver of the suite is gone, and no line may be new.
func WithHostState(f func() (string, error)) Option { return func(o *options) { o.hostState = f } }

// WithOwnKernel tells RunHostile that every capsule runs its own kernel (a
// microVM): the system-call attempts, which test the walls of a shared
// kernel, do not apply (root in the guest owns that kernel; the boundary is
// the VMM), so RunHostile skips them, saying why, and runs the rest.
func WithOwnKernel() Option { return func(o *options) { o.ownKernel = true } }

// helperPath is where RunHostile installs the helper in a capsule.
const helperPath = "/tmp/wrenn-hostile"

// RunHostile is the hostile-tenant suite: from inside capsules it tries
// what a tenant who wants out would (ptrace and memory of envd, mount,
// /proc/sys, raw sockets, unshare, kernel modules, bpf, perf_event_open,
// keyctl, every host address and listening port, another capsule, the
// cloud metadata address, a fork bomb, filling the disk and the memory)
// and checks that each attempt fails as it should, that strace of one's
// own processes still works, and that the capsule and its neighbour keep
// working. It needs WithHelper; WithHostState adds the leak check.
func RunHostile(t *testing.T, newDriver func(t *testing.T) runtime.Driver, opts ...Option) {
	o := options{template: "minimal"}
	for _, f := range opts {
		f(&o)
	}
	if o.helper == "" {
		t.Fatal("RunHostile needs WithHelper (a static build of ./internal/runtime/runtimetest/hostilehelper)")
	}
	var before string
	if o.hostState != nil {
		var err error
		if before, err = o.hostState(); err != nil {
			t.Fatalf("host state before: %v", err)
		}
	}
	h := &hostile{o: o}
	t.Run("Attacks", func(t *testing.T) { h.run(t, newDriver(t)) })
	if o.hostState != nil {
		// Objects may take a moment to go (lazy unmounts, autoclear
		// loops): poll briefly before declaring a leak. Objects that
		// existed before (other tests') may go; none may be new.
		var leaked []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			after, err := o.hostState()
			if err != nil {
				t.Fatalf("host state after: %v", err)
			}
			leaked = newLines(before, after)
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(leaked) > 0 {
			t.Errorf("the suite left host objects behind: %q", leaked)
		}
	}
}

// newLines returns the lines of after that are not in before (a
// multiset difference).
func newLines(before, after string) []string {
	have := map[string]int{}
	for _, l := range strings.Split(before, "\n") {
		have[l]++
	}
	var out []string
	for _, l := range strings.Split(after, "\n") {
		if have[l] > 0 {
			have[l]--
			continue
		}
		out = append(out, l)
	}
	return out
}

type hostile struct {
	o    options
	d    runtime.Driver
	a, b runtime.Info
}

func (h *hostile) run(t *testing.T, d runtime.Driver) {
	h.d = d
	ctx := testutil.Context(t, testutil.Long)
	start := func(spec runtime.Spec) runtime.Info {
		spec.Template = h.o.template
		if _, err := d.Create(ctx, spec); err != nil {
			t.Fatalf("Create(%s): %v", spec.ID, err)
		}
		info, err := d.Start(ctx, spec.ID)
		if err != nil {
			t.Fatalf("Start(%s): %v", spec.ID, err)
		}
		WaitHealthy(t, info)
		t.Cleanup(func() { _ = d.Destroy(context.WithoutCancel(ctx), spec.ID) })
		return info
	}
	// A small disk and memory so that filling them is quick.
	h.a = start(runtime.Spec{ID: "cl-hostile-a", DiskSizeMB: 64, MemoryMB: 128})
	h.b = start(runtime.Spec{ID: "cl-hostile-b"})
	for _, info := range []runtime.Info{h.a, h.b} {
		h.install(ctx, t, info)
	}
	t.Run("Syscalls", func(t *testing.T) {
		if h.o.ownKernel {
			t.Skip("each capsule has its own kernel (WithOwnKernel): root in the guest may mount, load modules or trace; the wall is the VMM")
		}
		h.syscalls(t)
	})
	t.Run("PtraceOwnChild", h.ptraceOwnChild)
	t.Run("Network", h.network)
	t.Run("FillDisk", h.fillDisk)
	if h.o.oomKillsCapsule {
		// Filling the memory ends capsule a: last.
		t.Run("ForkBomb", h.forkBomb)
		t.Run("StillWorks", h.stillWorks)
		t.Run("FillMemory", h.fillMemory)
		return
	}
	t.Run("FillMemory", h.fillMemory)
	t.Run("ForkBomb", h.forkBomb)
	t.Run("StillWorks", h.stillWorks)
}

// install uploads the helper into a capsule through envd.
func (h *hostile) install(ctx context.Context, t *testing.T, info runtime.Info) {
	t.Helper()
	bin, err := os.ReadFile(h.o.helper)
	if err != nil {
		t.Fatalf("read helper: %v", err)
	}
	c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Upload(ctx, helperPath, "root", bytes.NewReader(bin)); err != nil {
		t.Fatalf("upload helper to %s: %v", info.ID, err)
	}
	if out, err := EnvdExec(ctx, info, "root", "chmod", "755", helperPath); err != nil {
		t.Fatalf("chmod helper: %v: %s", err, out)
	}
}

// attempt runs one helper attempt in capsule a and returns its report line.
func (h *hostile) attempt(t *testing.T, user string, args ...string) string {
	t.Helper()
	ctx := testutil.Context(t, time.Minute)
	out, err := EnvdExec(ctx, h.a, user, append([]string{helperPath}, args...)...)
	if err != nil {
		t.Fatalf("helper %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(out)
}

func (h *hostile) syscalls(t *testing.T) {
	eperm := []string{"EPERM"}
	perm := []string{"EPERM", "EACCES"}
	tests := []struct {
		attempt string
		want    []string // acceptable errno names
	}{
		// envd (PID 1) holds the capsule's access token: no tracing,
		// no reading its memory or environment.
		{"ptrace-init", eperm},
		{"read-init-mem", perm},
		{"read-init-environ", perm},
		{"vm-read-init", perm},
		{"mount", eperm},
		// gVisor's /proc/sys answers a write it refuses with EIO.
		{"write-proc-sys", []string{"EROFS", "EACCES", "EPERM", "EIO"}},
		{"raw-socket", perm},
		{"packet-socket", perm},
		{"unshare-user", eperm},
		{"unshare-mount", eperm},
		{"unshare-net", eperm},
		{"init-module", eperm},
		{"finit-module", eperm},
		{"bpf", perm},
		{"perf-event-open", []string{"EPERM", "EACCES", "ENOSYS", "ENOENT"}},
		{"keyctl", []string{"EPERM", "ENOSYS"}},
		{"add-key", []string{"EPERM", "ENOSYS"}},
	}
	for _, user := range []string{"root", "user"} {
		for _, tt := range tests {
			t.Run(user+"/"+tt.attempt, func(t *testing.T) {
				got := h.attempt(t, user, tt.attempt)
				errno, ok := strings.CutPrefix(got, "DENIED ")
				if !ok || !slices.Contains(tt.want, errno) {
					t.Errorf("%s as %s: %q, want DENIED with one of %v", tt.attempt, user, got, tt.want)
				}
			})
		}
	}
	// envd is neither stopped nor gone.
	if !healthy(testutil.Context(t, time.Minute), h.a, 5*time.Second) {
		t.Errorf("envd of %s stopped answering after the attempts", h.a.ID)
	}
}

// ptraceOwnChild: strace and gdb of one's own processes keep working.
func (h *hostile) ptraceOwnChild(t *testing.T) {
	for _, user := range []string{"root", "user"} {
		if got := h.attempt(t, user, "ptrace-child"); got != "ALLOWED" {
			t.Errorf("ptrace of its own child as %s: %q, want ALLOWED", user, got)
		}
	}
}

// hostTargets lists host addresses (other than loopback, which inside a
// capsule is the capsule's own) crossed with every TCP port the host
// listens on, plus a listener of this test on all addresses.
func hostTargets(t *testing.T) []string {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	ports := map[int]bool{ln.Addr().(*net.TCPAddr).Port: true}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		for p := range listeningPorts(f) {
			ports[p] = true
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		for p := range ports {
			out = append(out, net.JoinHostPort(ipn.IP.String(), strconv.Itoa(p)))
		}
	}
	sort.Strings(out)
	return out
}

// listeningPorts parses /proc/net/tcp{,6} for sockets in LISTEN state.
func listeningPorts(path string) map[int]bool {
	ports := map[int]bool{}
	f, err := os.Open(path)
	if err != nil {
		return ports
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		_, port, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseInt(port, 16, 32); err == nil {
			ports[int(p)] = true
		}
	}
	return ports
}

func (h *hostile) network(t *testing.T) {
	targets := hostTargets(t)
	if len(targets) == 0 {
		t.Fatal("no host address to try")
	}
	// Another capsule's envd and the cloud metadata service.
	targets = append(targets, h.b.EnvdAddr(), "169.254.169.254:80", "169.254.169.254:443")
	got := h.attempt(t, "root", append([]string{"connect"}, targets...)...)
	if !strings.Contains(got, "DONE "+strconv.Itoa(len(targets))) {
		t.Fatalf("connect attempts did not finish: %q", got)
	}
	for _, line := range strings.Split(got, "\n") {
		if !strings.HasPrefix(line, "REACHED ") {
			continue
		}
		target := strings.TrimPrefix(line, "REACHED ")
		if dnsForwarderOf(h.a, target) {
			continue // the capsule's own resolver: by design (docs/NETWORK.md)
		}
		t.Errorf("capsule %s reached %s", h.a.ID, target)
	}
	t.Logf("tried %d host, neighbour and metadata addresses from inside a capsule", len(targets))
	// The host still reaches both capsules (the API's path).
	for _, info := range []runtime.Info{h.a, h.b} {
		if !healthy(testutil.Context(t, time.Minute), info, 5*time.Second) {
			t.Errorf("host cannot reach envd of %s", info.ID)
		}
	}
}

func (h *hostile) fillDisk(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	out, err := EnvdExec(ctx, h.a, "root", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M")
	if err == nil || !strings.Contains(out, "No space left") {
		t.Errorf("filling the disk: %v: %s, want ENOSPC", err, out)
	}
	// Usable again once the filler is gone (a microVM's root is the disk's
	// own root and may take the blocks ext4 keeps for root, so nothing
	// may be left to write before the rm).
	if out, err := EnvdExec(ctx, h.a, "root", "sh", "-c", "rm /root/fill && echo works > /root/after && cat /root/after && rm /root/after"); err != nil || strings.TrimSpace(out) != "works" {
		t.Errorf("capsule unusable after filling its disk: %v: %q", err, out)
	}
}

func (h *hostile) fillMemory(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	// The hog has its own time limit: when the host kills a whole sandbox
	// (gVisor), the exec's connection is never answered nor reset, and
	// waiting out ctx would leave no time for the checks below.
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	out, err := EnvdExec(hctx, h.a, "root", "awk", `BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }`)
	cancel()
	if err == nil {
		t.Errorf("memory hog finished without being killed: %s", out)
	}
	if h.o.oomKillsCapsule && !healthy(ctx, h.a, 2*time.Second) {
		// The runtime's documented behaviour (gVisor: the host's OOM
		// killer ends the sandbox): the capsule is reported stopped, and
		// the neighbour and the host are unaffected.
		testutil.Eventually(t, testutil.Long, func() bool {
			info, err := h.d.Inspect(ctx, h.a.ID)
			return err == nil && info.State == runtime.StateStopped
		}, "the capsule killed for its memory is reported stopped")
		testutil.Eventually(t, time.Minute, func() bool { return healthy(ctx, h.b, 5*time.Second) },
			"the neighbour answers after the capsule was killed for its memory")
		return
	}
	WaitHealthy(t, h.a)
	if out, err := EnvdExec(ctx, h.a, "root", "echo", "alive"); err != nil || strings.TrimSpace(out) != "alive" {
		t.Errorf("capsule unusable after filling its memory: %v: %q", err, out)
	}
}

// forkBomb runs a bomb in capsule a for a few seconds while a host-side
// health probe (an HTTP server of this test process: the stand-in for the
// API's /health) runs every 10 ms; it reports the probe's p99.
func (h *hostile) forkBomb(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/health"
	probe := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	bombDone := make(chan struct{})
	var bombOut string
	var bombErr error
	go func() {
		defer close(bombDone)
		bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		bombOut, bombErr = EnvdExec(bctx, h.a, "root", helperPath, "forkbomb", "8")
	}()
	var lat []time.Duration
	var failures int
	var mu sync.Mutex
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-bombDone:
			break loop
		case <-tick.C:
			t0 := time.Now()
			resp, err := probe.Get(url)
			d := time.Since(t0)
			mu.Lock()
			if err != nil {
				failures++
			} else {
				resp.Body.Close()
				lat = append(lat, d)
			}
			mu.Unlock()
		}
	}
	if len(lat) == 0 {
		t.Fatalf("no health probe answered during the fork bomb (%d failures)", failures)
	}
	slices.Sort(lat)
	p99 := lat[(len(lat)*99)/100]
	t.Logf("fork bomb (%v: %q): host /health p50 %v, p99 %v, max %v over %d probes, %d failed",
		bombErr, strings.TrimSpace(bombOut), lat[len(lat)/2], p99, lat[len(lat)-1], len(lat), failures)
	if failures > 0 {
		t.Errorf("%d host health probes failed during the fork bomb", failures)
	}
	if p99 > 2*time.Second {
		t.Errorf("host /health p99 %v during the fork bomb, want < 2s", p99)
	}
	// The capsule recovers once the bomb is over. Each attempt has its
	// own time limit: a connection made while the bomb starved the
	// capsule may never be answered (seen under gVisor, whose netstack
	// runs in the starved sandbox); a new one must be.
	var last error
	testutil.Eventually(t, testutil.Long, func() bool {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		out, err := EnvdExec(actx, h.a, "root", "echo", "alive")
		if err != nil {
			last = err
		}
		return err == nil && strings.TrimSpace(out) == "alive"
	}, "the capsule runs commands again after the fork bomb")
	if last != nil {
		t.Logf("an attempt after the bomb failed before one succeeded: %v", last)
	}
}

func (h *hostile) stillWorks(t *testing.T) {
	ctx := testutil.Context(t, testutil.Long)
	for _, info := range []runtime.Info{h.a, h.b} {
		WaitHealthy(t, info)
		// The fork bomb's last processes may still be exiting: the
		// capsule refuses new ones at its pids limit (resource_exhausted)
		// for a moment, as it should.
		var out string
		var err error
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err = EnvdExec(ctx, info, "user", "sh", "-c", "id -u && echo ok > /tmp/still && cat /tmp/still")
			if err == nil || !strings.Contains(err.Error(), "process limit") || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "ok") {
			t.Errorf("%s unusable after the attacks: %v: %q", info.ID, err, out)
		}
		if !strings.HasPrefix(strings.TrimSpace(out), "1000") {
			t.Errorf("%s: commands as user run as uid %q, want 1000", info.ID, out)
		}
	}
}

// dnsForwarderOf reports whether target is port 53 on a's own gateway (the
// host end of its veth, the address before a's in its /30): the agent's
// DNS forwarder, the one host port a capsule may reach. A neighbour's
// gateway is not excepted.
func dnsForwarderOf(a runtime.Info, target string) bool {
	ap, err := netip.ParseAddrPort(target)
	return err == nil && ap.Port() == 53 && a.IP.IsValid() && ap.Addr() == a.IP.Prev()
}
