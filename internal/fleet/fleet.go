// Package fleet runs a whole Wrenn fleet on one machine, for tests and for
// people trying a multi-host deployment (`wrenn dev fleet`): N host agents,
// each in its own network namespace with its own address, home, instance
// name (cgroup parent, nftables table, netns names) and capsule subnet; M
// control-plane replicas (`wrenn server`) on one PostgreSQL database; a
// round-robin load balancer in front of the replicas (API and port proxy);
// agents that join the control plane themselves (`wrenn agent
// --control-plane`) and speak mutual TLS; optionally one S3-compatible
// store for snapshots and templates.
//
// Addresses: agent i's namespace is linked to the host by a veth pair on
// 10.<Net>.<i>.0/30 (host .1, agent .2); its capsules use 10.<Net+1+i>.0.0/16.
// The agents reach the load balancer and the S3 store through forwarders the
// harness listens with on each link's host address. Nothing leaves the
// machine.
//
// Stop deletes every capsule through the API, stops the processes, deletes
// the namespaces and the database, and reports any host object left.
package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// Options configure a fleet.
type Options struct {
	// Dir holds homes, certificates, logs; it must exist (left to the caller).
	Dir string
	// LogLevel of the agents and replicas ("warn" when empty).
	LogLevel string
	// Name prefixes every host object (1–6 lower-case letters and digits).
	Name string
	// Agents and Replicas count the hosts and control-plane replicas (≥ 1).
	Agents, Replicas int
	// Net is the second octet of the link addresses (10.Net.i.0/30);
	// capsule subnets use 10.Net+1 … 10.Net+Agents.
	Net int
	// CapsuleNet, when set, puts the agents' capsule subnets in
	// 10.CapsuleNet.0.0/16 instead, a /18 each (at most 4 agents), so a
	// fleet uses two second octets whatever its size.
	CapsuleNet int
	// Wrenn and Envd are the binaries to run.
	Wrenn, Envd string
	// PostgresDSN may CREATE DATABASE; the fleet makes its own database
	// and drops it on Stop.
	PostgresDSN string
	// S3, when set, is the snapshot and template store every agent shares
	// (capsules paused on one host can resume on another).
	S3 *snapstore.S3Config
	// HeartbeatInterval and ReconcileInterval of the control plane
	// (defaults 2 s and 2 s: a fleet for tests notices failures fast).
	HeartbeatInterval, ReconcileInterval time.Duration
	// WarmPool is the agents' --warm-pool (default "off": a fleet for
	// tests keeps no warm capsules unless a test is about them); cold
	// spares are off too (AgentArgs may turn them on).
	WarmPool string
	// AgentArgs are extra `wrenn agent` flags (e.g. --no-criu).
	AgentArgs []string
	// HomeSizeMB, when > 0, puts each agent's home on an ext4 filesystem
	// of its own of that size (a sparse image in Dir on a loop device), so
	// that filling one host's disk (the chaos fault) touches nothing else.
	HomeSizeMB int
	// BuildStaleAfter is the replicas' --build-stale-after (0: their
	// default): how soon a build whose replica died is failed.
	BuildStaleAfter time.Duration
	// Log receives progress lines (default: discarded).
	Log io.Writer
}

// Fleet is a running fleet.
type Fleet struct {
	o        Options
	URL      string // the load balancer: the API every replica serves
	ProxyURL string // the load balancer of the port proxies
	AdminKey string
	Agents   []*Agent
	Replicas []*Replica

	dbName, dsn string
	lbs         []*balancer
	forwarders  []net.Listener
	spawn       *spawner
	certs       *certs
	mu          sync.Mutex
	stopped     bool
}

// Agent is one host.
type Agent struct {
	Index    int
	Instance string // --instance: cgroup parent /<Instance>, netns <Instance>-…
	Netns    string // the agent's own network namespace
	HostIP   netip.Addr
	IP       netip.Addr // the agent's address in its namespace
	Subnet   netip.Prefix
	Home     string
	HostID   string // once joined
	image    string // the home's filesystem image (HomeSizeMB)
	proc     *proc
	args     []string
}

// Replica is one control plane.
type Replica struct {
	Index          int
	URL, ProxyURL  string
	api, proxyAddr string
	proc           *proc
	args           []string
}

func (f *Fleet) logf(format string, a ...any) {
	if f.o.Log != nil {
		_, _ = fmt.Fprintf(f.o.Log, "fleet %s: "+format+"\n", append([]any{f.o.Name}, a...)...)
	}
}

// Start brings a fleet up: database, certificates, replicas, load
// balancers, agent namespaces, agents (which join by themselves), and waits
// until every host is online. On error everything started is stopped.
func Start(ctx context.Context, o Options) (f *Fleet, err error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 2 * time.Second
	}
	if o.ReconcileInterval == 0 {
		o.ReconcileInterval = 2 * time.Second
	}
	f = &Fleet{o: o, spawn: newSpawner()}
	defer func() {
		if err != nil {
			_ = f.Stop()
			f = nil
		}
	}()
	if f.dbName, f.dsn, err = createDatabase(ctx, o.PostgresDSN, "fleet_"+o.Name); err != nil {
		return f, err
	}
	if f.certs, err = newCerts(filepath.Join(o.Dir, "certs")); err != nil {
		return f, err
	}
	for i := range o.Agents {
		a := &Agent{
			Index:    i,
			Instance: fmt.Sprintf("%sa%d", o.Name, i),
			Netns:    fmt.Sprintf("%s-h%d", o.Name, i),
			HostIP:   netip.AddrFrom4([4]byte{10, byte(o.Net), byte(i), 1}),
			IP:       netip.AddrFrom4([4]byte{10, byte(o.Net), byte(i), 2}),
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(o.Net + 1 + i), 0, 0}), 16),
			Home:     filepath.Join(o.Dir, fmt.Sprintf("agent%d", i)),
		}
		if o.CapsuleNet != 0 {
			a.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(o.CapsuleNet), byte(64 * i), 0}), 18)
		}
		if err := f.certs.server(a.Instance, a.IP); err != nil {
			return f, err
		}
		f.Agents = append(f.Agents, a)
	}
	secret := filepath.Join(o.Dir, "server.secret")
	for i := range o.Replicas {
		r := &Replica{Index: i}
		if r.api, err = freeAddr(); err != nil {
			return f, err
		}
		if r.proxyAddr, err = freeAddr(); err != nil {
			return f, err
		}
		r.URL, r.ProxyURL = "http://"+r.api, "http://"+r.proxyAddr
		r.args = []string{
			"server", "--listen", r.api, "--proxy-listen", r.proxyAddr, "--db", f.dsn,
			"--jwt-secret-file", secret, "--replica-id", fmt.Sprintf("%s-r%d", o.Name, i),
			"--agent-ca", f.certs.caPath, "--agent-client-cert", f.certs.clientCert, "--agent-client-key", f.certs.clientKey,
			"--heartbeat-interval", o.HeartbeatInterval.String(), "--reconcile-interval", o.ReconcileInterval.String(),
			"--log-level", o.logLevel(),
		}
		if o.BuildStaleAfter > 0 {
			r.args = append(r.args, "--build-stale-after", o.BuildStaleAfter.String())
		}
		if i == 0 {
			r.args = append(r.args, "--admin-key-file", filepath.Join(o.Dir, "admin.key"))
		}
		f.Replicas = append(f.Replicas, r)
		if err := f.StartReplica(ctx, i); err != nil {
			return f, err
		}
		if i == 0 {
			// Replica 0 migrates the database and makes the admin first.
			b, err := os.ReadFile(filepath.Join(o.Dir, "admin.key"))
			if err != nil {
				return f, fmt.Errorf("fleet: admin key: %w", err)
			}
			f.AdminKey = strings.TrimSpace(string(b))
		}
	}
	var apis, proxies []string
	for _, r := range f.Replicas {
		apis, proxies = append(apis, r.api), append(proxies, r.proxyAddr)
	}
	apiLB, err := newBalancer("127.0.0.1:0", apis)
	if err != nil {
		return f, err
	}
	f.lbs = append(f.lbs, apiLB)
	proxyLB, err := newBalancer("127.0.0.1:0", proxies)
	if err != nil {
		return f, err
	}
	f.lbs = append(f.lbs, proxyLB)
	f.URL, f.ProxyURL = "http://"+apiLB.Addr(), "http://"+proxyLB.Addr()
	f.logf("control plane: %d replicas behind %s", o.Replicas, f.URL)

	for _, a := range f.Agents {
		if err := f.setupAgentNet(ctx, a); err != nil {
			return f, err
		}
		// The agent reaches the API (and the S3 store) through the host
		// end of its own link.
		apiPort := apiLB.Port()
		if err := apiLB.ListenAlso(netip.AddrPortFrom(a.HostIP, uint16(apiPort)).String()); err != nil { //nolint:gosec // a port
			return f, err
		}
		if o.HomeSizeMB > 0 {
			if err := mountHome(ctx, a, filepath.Join(o.Dir, a.Instance+"-home.img"), o.HomeSizeMB); err != nil {
				return f, err
			}
		}
		if err := f.prepareAgent(ctx, a, apiPort); err != nil {
			return f, err
		}
		if err := f.StartAgent(ctx, a.Index); err != nil {
			return f, err
		}
	}
	if err := f.WaitHostsOnline(ctx, len(f.Agents)); err != nil {
		return f, err
	}
	f.logf("up: %d hosts online", len(f.Agents))
	return f, nil
}

func (o *Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("fleet: Dir is required")
	case len(o.Name) < 1 || len(o.Name) > 6 || strings.Trim(o.Name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" || o.Name[0] < 'a':
		return fmt.Errorf("fleet: Name %q: 1–6 lower-case letters and digits, starting with a letter", o.Name)
	case o.Agents < 1 || o.Agents > 50 || o.Replicas < 1 || o.Replicas > 10:
		return fmt.Errorf("fleet: %d agents and %d replicas: want 1–50 and 1–10", o.Agents, o.Replicas)
	case o.Net < 1 || o.Net+o.Agents > 254:
		return fmt.Errorf("fleet: Net %d does not leave room for %d capsule subnets", o.Net, o.Agents)
	case o.CapsuleNet != 0 && (o.CapsuleNet < 1 || o.CapsuleNet > 254 || o.Agents > 4):
		return fmt.Errorf("fleet: CapsuleNet %d holds capsule subnets for at most 4 agents (%d asked)", o.CapsuleNet, o.Agents)
	case o.Wrenn == "" || o.Envd == "":
		return errors.New("fleet: Wrenn and Envd binaries are required")
	case o.PostgresDSN == "":
		return errors.New("fleet: PostgresDSN is required (replicas share one PostgreSQL)")
	}
	return nil
}

// setupAgentNet makes the agent's namespace and its link to the host.
func (f *Fleet) setupAgentNet(ctx context.Context, a *Agent) error {
	hostIf := fmt.Sprintf("%sh%d", f.o.Name, a.Index)
	steps := [][]string{
		{"ip", "netns", "add", a.Netns},
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", a.Netns},
		{"ip", "addr", "add", a.HostIP.String() + "/30", "dev", hostIf},
		{"ip", "link", "set", hostIf, "up"},
		{"ip", "-n", a.Netns, "link", "set", "lo", "up"},
		{"ip", "-n", a.Netns, "addr", "add", a.IP.String() + "/30", "dev", "eth0"},
		{"ip", "-n", a.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", a.Netns, "route", "add", "default", "via", a.HostIP.String()},
		// The agent's namespace forwards its capsules' packets.
		{"ip", "netns", "exec", a.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("fleet: %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// prepareAgent writes the agent's home: the minimal template (the agents
// have no network to build base), a join token, and its arguments.
func (f *Fleet) prepareAgent(ctx context.Context, a *Agent, apiPort int) error {
	tmpls := template.Store{Dir: filepath.Join(a.Home, "templates")}
	if err := os.MkdirAll(tmpls.Dir, 0o755); err != nil {
		return err
	}
	if _, err := tmpls.Get("minimal"); errors.Is(err, template.ErrNotFound) {
		if _, err := tmpls.BuildBusybox(ctx, "minimal", template.BusyboxPath); err != nil {
			return fmt.Errorf("fleet: minimal template for %s: %w", a.Instance, err)
		}
	}
	var tok struct {
		Token string `json:"token"`
	}
	if err := f.AdminDo(ctx, http.MethodPost, "/v1/admin/hosts/tokens", map[string]any{}, &tok); err != nil {
		return fmt.Errorf("fleet: host token: %w", err)
	}
	tokFile := filepath.Join(a.Home, "join.token")
	if err := os.WriteFile(tokFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		return err
	}
	key, cert := f.certs.serverFiles(a.Instance)
	a.args = []string{
		"agent", "--instance", a.Instance, "--subnet", a.Subnet.String(),
		"--home", a.Home, "--envd-path", f.o.Envd, "--default-rootfs-size", "256MiB",
		"--listen", netip.AddrPortFrom(a.IP, 50051).String(),
		"--control-plane", fmt.Sprintf("http://%s:%d", a.HostIP, apiPort), "--join-token-file", tokFile,
		"--advertise-address", fmt.Sprintf("https://%s:50051", a.IP),
		"--tls-cert", cert, "--tls-key", key, "--client-ca", f.certs.caPath,
		"--log-level", f.o.logLevel(),
	}
	if f.o.S3 != nil {
		fwd, err := f.forward(netip.AddrPortFrom(a.HostIP, 0).String(), f.o.S3.Endpoint)
		if err != nil {
			return err
		}
		a.args = append(a.args,
			"--s3-endpoint", fwd, "--s3-insecure", "--s3-region", f.o.S3.Region,
			"--snapshot-store", "s3://"+f.o.S3.Bucket+"/"+f.o.S3.Prefix+"snapshots/",
			"--template-store", "s3://"+f.o.S3.Bucket+"/"+f.o.S3.Prefix+"templates/",
		)
	}
	pool := f.o.WarmPool
	if pool == "" {
		pool = "off"
	}
	// Nor cold spares (flags later in AgentArgs win).
	a.args = append(a.args, "--warm-pool", pool, "--cold-spares", "0")
	a.args = append(a.args, f.o.AgentArgs...)
	return nil
}

func (o Options) logLevel() string {
	if o.LogLevel == "" {
		return "warn"
	}
	return o.LogLevel
}

// StartAgent starts (or restarts) agent i in its namespace.
func (f *Fleet) StartAgent(ctx context.Context, i int) error {
	a := f.Agents[i]
	var env []string
	if f.o.S3 != nil {
		env = []string{"WRENN_S3_ACCESS_KEY=" + f.o.S3.AccessKey, "WRENN_S3_SECRET_KEY=" + f.o.S3.SecretKey}
	}
	args := append([]string{"--net=/run/netns/" + a.Netns, "--", f.o.Wrenn}, a.args...)
	p, err := f.spawn.start(ctx, "nsenter", args, env, filepath.Join(f.o.Dir, a.Instance+".log"))
	if err != nil {
		return fmt.Errorf("fleet: start agent %d: %w", i, err)
	}
	a.proc = p
	return nil
}

// StartReplica starts (or restarts) replica i and waits for its health.
func (f *Fleet) StartReplica(ctx context.Context, i int) error {
	r := f.Replicas[i]
	p, err := f.spawn.start(ctx, f.o.Wrenn, r.args, nil, filepath.Join(f.o.Dir, fmt.Sprintf("replica%d.log", i)))
	if err != nil {
		return fmt.Errorf("fleet: start replica %d: %w", i, err)
	}
	r.proc = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(r.URL + "/health") //nolint:noctx // bounded by the loop
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("fleet: replica %d exited: %s", i, p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fleet: replica %d not healthy within 60 s: %s", i, p.tail())
		}
	}
}

// KillAgent kills agent i with SIGKILL (its capsules keep running, as
// after a crash) and waits for it to exit.
func (f *Fleet) KillAgent(i int) { f.Agents[i].proc.kill() }

// KillReplica kills replica i with SIGKILL.
func (f *Fleet) KillReplica(i int) { f.Replicas[i].proc.kill() }

// AgentLog returns the end of agent i's log.
func (f *Fleet) AgentLog(i int) string { return f.Agents[i].proc.tail() }

// AdminDo calls the API through the load balancer as the platform admin,
// decoding a JSON answer into out (if not nil); a non-2xx answer is an
// error carrying the body.
func (f *Fleet) AdminDo(ctx context.Context, method, path string, in, out any) error {
	return f.Do(ctx, f.AdminKey, method, path, in, out)
}

// Do calls the API through the load balancer with key.
func (f *Fleet) Do(ctx context.Context, key, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	base := f.URL
	if base == "" && len(f.Replicas) > 0 { // during Start, before the balancer
		base = f.Replicas[0].URL
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return &APIError{Status: resp.StatusCode, Body: string(b)}
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	Body   string
}

func (e *APIError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body) }

// Host is a host as the admin API shows it.
type Host struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Status  string `json:"status"`
}

// Hosts lists the hosts the control plane knows.
func (f *Fleet) Hosts(ctx context.Context) ([]Host, error) {
	var raw json.RawMessage
	if err := f.AdminDo(ctx, http.MethodGet, "/v1/admin/hosts", nil, &raw); err != nil {
		return nil, err
	}
	var hs []Host
	if err := json.Unmarshal(raw, &hs); err == nil {
		return hs, nil
	}
	var wrapped struct {
		Hosts []Host `json:"hosts"`
	}
	if err := json.Unmarshal(raw, &wrapped); err != nil {
		return nil, fmt.Errorf("fleet: hosts answer: %w", err)
	}
	return wrapped.Hosts, nil
}

// WaitHostsOnline waits until n hosts are online and records each agent's
// host id (matched by address).
func (f *Fleet) WaitHostsOnline(ctx context.Context, n int) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		hs, err := f.Hosts(ctx)
		online := 0
		if err == nil {
			for _, h := range hs {
				if h.Status != "online" {
					continue
				}
				online++
				for _, a := range f.Agents {
					if strings.Contains(h.Address, a.IP.String()+":") {
						a.HostID = h.ID
					}
				}
			}
			if online >= n && f.agentsAnswer(ctx) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			var logs []string
			for _, a := range f.Agents {
				if a.proc != nil {
					logs = append(logs, a.Instance+": "+a.proc.tail())
				}
			}
			return fmt.Errorf("fleet: %d of %d hosts online after 90 s (last error %w); agent logs:\n%s", online, n, err, strings.Join(logs, "\n"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// agentsAnswer reports whether every started agent answers its API
// (mutual TLS, its credential): a host is online from its registration,
// a moment before its agent serves.
func (f *Fleet) agentsAnswer(ctx context.Context) bool {
	for _, a := range f.Agents {
		if a.proc == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := f.AgentCapsules(cctx, a.Index)
		cancel()
		if err != nil {
			return false
		}
	}
	return true
}

// forward listens on listen (port 0: any) and copies every connection to
// target; it returns the address it listens on.
func (f *Fleet) forward(listen, target string) (string, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", fmt.Errorf("fleet: forwarder: %w", err)
	}
	f.mu.Lock()
	f.forwarders = append(f.forwarders, ln)
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

// Stop deletes every capsule, stops agents and replicas, removes the
// namespaces, links and database, and reports host objects left behind.
func (f *Fleet) Stop() error {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return nil
	}
	f.stopped = true
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	if f.AdminKey != "" && f.URL != "" {
		if err := f.deleteAllCapsules(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	// Capsules the store no longer knows (deleted while their host was
	// away, not yet destroyed by the reconciler) are destroyed on their
	// agents directly.
	for _, a := range f.Agents {
		if a.proc != nil {
			f.destroyOnAgent(ctx, a.Index)
		}
	}
	for _, a := range f.Agents {
		if a.proc != nil {
			a.proc.stop(30 * time.Second)
		}
	}
	for _, r := range f.Replicas {
		if r.proc != nil {
			r.proc.stop(15 * time.Second)
		}
	}
	for _, lb := range f.lbs {
		lb.Close()
	}
	f.mu.Lock()
	for _, ln := range f.forwarders {
		_ = ln.Close()
	}
	f.mu.Unlock()
	f.spawn.close()
	for _, a := range f.Agents {
		errs = append(errs, cleanupAgent(f.o.Name, a)...)
	}
	if f.dbName != "" {
		if err := dropDatabase(ctx, f.o.PostgresDSN, f.dbName); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (f *Fleet) deleteAllCapsules(ctx context.Context) error {
	var page struct {
		Capsules []struct {
			ID string `json:"id"`
		} `json:"capsules"`
	}
	if err := f.AdminDo(ctx, http.MethodGet, "/v1/admin/capsules?limit=1000", nil, &page); err != nil {
		return fmt.Errorf("fleet: list capsules: %w", err)
	}
	var errs []error
	for _, c := range page.Capsules {
		if err := f.AdminDo(ctx, http.MethodDelete, "/v1/admin/capsules/"+c.ID, nil, nil); err != nil {
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
				errs = append(errs, fmt.Errorf("fleet: delete %s: %w", c.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cleanupAgent removes what an agent's host objects outside its namespace
// may leave (after a kill -9 the agent had no chance to): capsule
// namespaces, cgroup parents; then the agent's namespace and link.
func cleanupAgent(name string, a *Agent) []error {
	var errs []error
	// What a stopped agent keeps for its next start (its LXCFS daemon and
	// mount, serving capsules it would re-adopt) goes with the fleet.
	if es, err := os.ReadDir("/proc"); err == nil {
		for _, e := range es {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(b), a.Home+"/") {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		lines := strings.Split(string(b), "\n")
		for i := len(lines) - 1; i >= 0; i-- { // deepest (latest) first
			if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], a.Home+"/") {
				_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
			}
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), a.Instance+"-") {
			errs = append(errs, fmt.Errorf("fleet: capsule namespace %s left by %s", e.Name(), a.Instance))
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	for _, root := range cgroupRoots() {
		p := filepath.Join(root, a.Instance)
		if _, err := os.Stat(p); err == nil {
			if sub, _ := os.ReadDir(p); countDirs(sub) > 0 {
				errs = append(errs, fmt.Errorf("fleet: cgroups left under %s", p))
			}
			_ = removeCgroupTree(p)
		}
	}
	if a.image != "" {
		// The loop device was set up with autoclear: it goes with the
		// last unmount. The capsule mounts detached above (their loop
		// devices backed by files in the home) may hold it for a moment.
		var err error
		for range 50 {
			if err = syscall.Unmount(a.Home, 0); !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("fleet: unmount %s: %w", a.Home, err))
			_ = syscall.Unmount(a.Home, syscall.MNT_DETACH)
		}
		_ = os.Remove(a.image)
	}
	_ = exec.Command("ip", "netns", "del", a.Netns).Run()
	_ = exec.Command("ip", "link", "del", fmt.Sprintf("%sh%d", name, a.Index)).Run()
	return errs
}

// mountHome puts the agent's home on an ext4 filesystem of sizeMB in a
// sparse image (no reserved blocks: the agent runs as root, which could
// write into them), on an autoclear loop device.
func mountHome(ctx context.Context, a *Agent, image string, sizeMB int) error {
	f, err := os.Create(image)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	a.image = image
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", image).CombinedOutput(); err != nil {
		return fmt.Errorf("fleet: mkfs %s: %w: %s", image, err, out)
	}
	if err := os.MkdirAll(a.Home, 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "mount", "-o", "loop", image, a.Home).CombinedOutput(); err != nil {
		return fmt.Errorf("fleet: mount %s: %w: %s", image, err, out)
	}
	return nil
}

// FillDisk fills agent i's home filesystem (Options.HomeSizeMB) with one
// file and returns a function that removes it.
func (f *Fleet) FillDisk(i int) (undo func() error, err error) {
	a := f.Agents[i]
	if a.image == "" {
		return nil, errors.New("fleet: filling a disk needs Options.HomeSizeMB")
	}
	p := filepath.Join(a.Home, "fleet-disk-full")
	fh, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	undo = func() error { return os.Remove(p) }
	var st syscall.Statfs_t
	if err := syscall.Statfs(a.Home, &st); err != nil {
		return undo, err
	}
	if n := int64(st.Bfree) * st.Bsize; n > 1<<20 { //nolint:gosec // block counts fit
		// Most of it at once; the writes below take the rest.
		_ = syscall.Fallocate(int(fh.Fd()), 0, 0, n-1<<20) //nolint:gosec // a file descriptor
		_, _ = fh.Seek(0, io.SeekEnd)
	}
	for _, size := range []int{64 << 10, 4 << 10} { // big writes, then the last blocks
		buf := make([]byte, size)
		for {
			_, err := fh.Write(buf)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				return undo, err
			}
		}
	}
	return undo, nil
}

func cgroupRoots() []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return out
}

func countDirs(es []os.DirEntry) int {
	n := 0
	for _, e := range es {
		if e.IsDir() {
			n++
		}
	}
	return n
}

// removeCgroupTree removes a cgroup directory and its children (deepest
// first); cgroup directories are removed with rmdir.
func removeCgroupTree(p string) error {
	es, _ := os.ReadDir(p)
	for _, e := range es {
		if e.IsDir() {
			_ = removeCgroupTree(filepath.Join(p, e.Name()))
		}
	}
	return syscall.Rmdir(p)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// spawner starts child processes from one locked OS thread that lives as
// long as the fleet: Pdeathsig follows the forking thread, and the Go
// runtime may end other threads (the container code ends threads it
// tainted), which would kill the children mid-test.
type spawner struct {
	reqs chan func()
	done chan struct{}
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan func()), done: make(chan struct{})}
	go func() {
		goruntime.LockOSThread()
		defer goruntime.UnlockOSThread()
		for {
			select {
			case f := <-s.reqs:
				f()
			case <-s.done:
				return
			}
		}
	}()
	return s
}

func (s *spawner) close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// proc is a child process with its log.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

func (s *spawner) start(_ context.Context, bin string, args, env []string, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	errc := make(chan error, 1)
	select {
	case s.reqs <- func() { errc <- cmd.Start() }:
	case <-s.done:
		_ = logf.Close()
		return nil, errors.New("fleet: stopped")
	}
	if err := <-errc; err != nil {
		_ = logf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(p.exited) }()
	return p, nil
}

func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// stop asks the process to end (SIGTERM), then kills it after grace.
func (p *proc) stop(grace time.Duration) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.kill()
	}
}

// tail is the last 2 KB of the log.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}
