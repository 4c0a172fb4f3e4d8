package hostagent_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

const (
	tmplName = "minimal"
	secret   = "test-host-secret"
)

var (
	envdBin   string
	templates *template.Store
	setupErr  error
	seq       atomic.Int32
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	if *helperConfig != "" {
		// Re-executed by a test as a separate agent process to be killed.
		if err := runHelperAgent(*helperConfig); err != nil {
			fmt.Fprintln(os.Stderr, "helper agent:", err)
			return 2
		}
		return 0
	}
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "wrenn-hostagent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	envdBin, setupErr = buildEnvd(dir)
	if setupErr == nil {
		templates = &template.Store{Dir: filepath.Join(dir, "templates")}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, setupErr = templates.BuildBusybox(ctx, tmplName, "")
		cancel()
	}
	code := m.Run()
	// No goroutine may outlive the agents and drivers the tests closed:
	// samplers, the reaper, proxies and envd streams included.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
	}
	return code
}

func buildEnvd(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "envd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/envd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build envd: %w: %s", err, out)
	}
	return bin, nil
}

// host is one agent with its driver, served on loopback.
type host struct {
	t        testing.TB
	driverCf container.Config
	agentCf  hostagent.Config
	driver   *container.Driver
	agent    *hostagent.Agent
	client   hostagentv1connect.HostAgentServiceClient
	url      string
	stop     func()
}

// dirs are the on-disk places a host uses; a restarted host reuses them.
type dirs struct {
	driverState, agentState string
	tag                     string
	subnet                  netip.Prefix
	// tweakDriver, when set, adjusts the driver config (a restarted host
	// on the same dirs gets the same).
	tweakDriver func(*container.Config)
}

func newDirs(t testing.TB) dirs {
	t.Helper()
	n := seq.Add(1)
	return dirs{
		driverState: t.TempDir(),
		agentState:  t.TempDir(),
		tag:         fmt.Sprintf("wha%d-%d", os.Getpid()%100000, n),
		subnet:      netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 180+int(n)%20)),
	}
}

// logLevel is lowered by benchmarks to see per-step timings.
var logLevel = slog.LevelWarn

// driverConfig is the container driver config of a host on d: its cgroup
// parent, nft table, netns prefix and subnet belong to d alone.
func driverConfig(d dirs) container.Config {
	c := baseDriverConfig(d)
	if d.tweakDriver != nil {
		d.tweakDriver(&c)
	}
	return c
}

func baseDriverConfig(d dirs) container.Config {
	return container.Config{
		StateDir:          d.driverState,
		Templates:         *templates,
		EnvdPath:          envdBin,
		DefaultMemoryMB:   128,
		DefaultDiskSizeMB: 64,
		PidsLimit:         128,
		CgroupParent:      "/" + d.tag,
		Network:           network.Config{Subnet: d.subnet, Table: d.tag, NetnsPrefix: d.tag + "-"},
		Logger:            logger(),
	}
}

func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
}

// startHost opens a driver and an agent on d and serves the agent. tweak
// adjusts the agent config. The host is closed (not its capsules) at the
// end of the test unless the test closes it first; a final cleanup
// destroys every capsule left.
func startHost(t testing.TB, d dirs, tweak func(*hostagent.Config)) *host {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	ctx := testutil.Context(t, testutil.Long)
	dc := driverConfig(d)
	drv, err := container.New(ctx, dc)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	ac := hostagent.Config{
		Driver:          drv,
		StateDir:        d.agentState,
		Templates:       templates,
		DefaultTemplate: tmplName,
		SampleInterval:  100 * time.Millisecond,
		ReapInterval:    100 * time.Millisecond,
		Secret:          secret,
		Logger:          logger(),
	}
	if tweak != nil {
		tweak(&ac)
	}
	ag, err := hostagent.New(ctx, ac)
	if err != nil {
		_ = drv.Close()
		t.Fatalf("hostagent.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := ag.Serve(sctx, ln, hostagent.ServerConfig{Logger: logger()}); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	h := &host{t: t, driverCf: dc, agentCf: ac, driver: drv, agent: ag, url: "http://" + ln.Addr().String()}
	h.client = newClient(h.url, secret)
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			_ = ag.Close()
			_ = drv.Close()
		})
	}
	t.Cleanup(func() {
		h.stop()
		// Remove every capsule the test left, and the driver's host objects.
		cctx, ccancel := context.WithTimeout(context.Background(), testutil.Long)
		defer ccancel()
		last, err := container.New(cctx, dc)
		if err != nil {
			t.Errorf("cleanup driver: %v", err)
			return
		}
		infos, _ := last.Recover(cctx)
		for _, in := range infos {
			_ = last.Destroy(cctx, in.ID)
		}
		_ = last.Close()
		_ = last.Network().RemoveTable()
		for _, sub := range []string{"unified", "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc", ""} {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", sub, dc.CgroupParent))
		}
	})
	return h
}

func httpClient() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p, MaxIdleConnsPerHost: 16}}
}

func newClient(url, token string) hostagentv1connect.HostAgentServiceClient {
	return newClientWith(httpClient(), url, token)
}

func newClientWith(hc *http.Client, url, token string) hostagentv1connect.HostAgentServiceClient {
	return hostagentv1connect.NewHostAgentServiceClient(hc, url, connect.WithInterceptors(bearer(token)))
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// helperConfig, when set, makes the test binary run as an agent process
// (see startAgentProcess) instead of running tests.
var helperConfig = flag.String("helper-agent", "", "internal: run as an agent process with this JSON config")

// processConfig is what a helper agent process needs.
type processConfig struct {
	DriverState, AgentState, Tag, Subnet string
	Templates, Envd, AddrFile            string
}

func runHelperAgent(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var pc processConfig
	if err := json.Unmarshal(b, &pc); err != nil {
		return err
	}
	envdBin, templates = pc.Envd, &template.Store{Dir: pc.Templates}
	d := dirs{driverState: pc.DriverState, agentState: pc.AgentState, tag: pc.Tag, subnet: netip.MustParsePrefix(pc.Subnet)}
	ctx := context.Background()
	drv, err := container.New(ctx, driverConfig(d))
	if err != nil {
		return err
	}
	ag, err := hostagent.New(ctx, hostagent.Config{
		Driver: drv, StateDir: d.agentState, Templates: templates, DefaultTemplate: tmplName,
		Secret: secret, Logger: logger(),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := os.WriteFile(pc.AddrFile+".tmp", []byte(ln.Addr().String()), 0o600); err != nil {
		return err
	}
	if err := os.Rename(pc.AddrFile+".tmp", pc.AddrFile); err != nil {
		return err
	}
	return ag.Serve(ctx, ln, hostagent.ServerConfig{Logger: logger()})
}

// agentProcess is an agent running in a child process.
type agentProcess struct {
	cmd    *exec.Cmd
	client hostagentv1connect.HostAgentServiceClient
	done   chan struct{}
}

// startAgentProcess runs an agent on d in a child process (this test
// binary with -helper-agent) and waits until it serves.
func startAgentProcess(t testing.TB, d dirs) *agentProcess {
	t.Helper()
	tmp := t.TempDir()
	pc := processConfig{
		DriverState: d.driverState, AgentState: d.agentState, Tag: d.tag, Subnet: d.subnet.String(),
		Templates: templates.Dir, Envd: envdBin, AddrFile: filepath.Join(tmp, "addr"),
	}
	b, _ := json.Marshal(pc)
	cfgPath := filepath.Join(tmp, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-helper-agent", cfgPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill9() })
	var addr []byte
	testutil.Eventually(t, testutil.Long, func() bool {
		var err error
		addr, err = os.ReadFile(pc.AddrFile)
		return err == nil
	}, "agent process did not start serving")
	p.client = newClient("http://"+string(addr), secret)
	return p
}

// kill9 kills the agent process with SIGKILL and reaps it.
func (p *agentProcess) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}
