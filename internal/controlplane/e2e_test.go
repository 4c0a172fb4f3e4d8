package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

var agentSeq atomic.Int32

// agentDirs maps a test agent's host id to its directory (templates,
// driver and agent state, snapshots), for tests that measure stored bytes.
var agentDirs sync.Map

// startAgent runs a real host agent with the container driver on
// loopback, registered with the control plane through hostlink.
func startAgent(t testing.TB, c *cp, adminTok string) (hostID string, agent *hostagent.Agent) {
	t.Helper()
	// 10.170-179: a range no other package's tests use.
	return startAgentOn(t, c, adminTok, netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 170+int(agentSeq.Add(1))%10)))
}

// startAgentOn is startAgent with the capsules' subnet given.
func startAgentOn(t testing.TB, c *cp, adminTok string, subnet netip.Prefix) (hostID string, agent *hostagent.Agent) {
	t.Helper()
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
	defer func() { agentDirs.Store(hostID, dir) }()
	envd, err := buildEnvd(dir)
	if err != nil {
		t.Fatal(err)
	}
	tmpls := &template.Store{Dir: filepath.Join(dir, "templates")}
	if _, err := tmpls.BuildBusybox(ctx, "minimal", ""); err != nil {
		t.Fatalf("build minimal template: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tok := c.call("POST", "/v1/admin/hosts/tokens", adminTok, map[string]any{}, 201).obj(t)["token"].(string)
	hl := &hostlink.Client{BaseURL: c.url}
	reg, err := hl.Register(ctx, tok, hostlink.Usage{Address: ln.Addr().String(), VCPUs: 4, MemoryMB: 8192, DiskMB: 100000})
	if err != nil {
		t.Fatal(err)
	}
	tag := "wcp" + strings.TrimPrefix(reg.HostID, "host-")[:6]
	dc := container.Config{
		StateDir: filepath.Join(dir, "driver"), Templates: *tmpls, EnvdPath: envd,
		DefaultMemoryMB: 128, DefaultDiskSizeMB: 64, PidsLimit: 128, CgroupParent: "/" + tag,
		Network: network.Config{
			Subnet: subnet,
			Table:  tag, NetnsPrefix: tag + "-",
		},
		Logger: logger(),
		// With a working CRIU (make test builds one) pause to disk keeps
		// memory; the end-to-end test checks what the API reports.
		CRIUPath:    os.Getenv("WRENN_TEST_CRIU"),
		DisableCRIU: os.Getenv("WRENN_TEST_CRIU") == "",
	}
	drv, err := container.New(ctx, dc)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	ag, err := hostagent.New(ctx, hostagent.Config{
		Driver: drv, StateDir: filepath.Join(dir, "agent"), Templates: tmpls, DefaultTemplate: "minimal",
		Secret: reg.Credential, Logger: logger(),
	})
	if err != nil {
		_ = drv.Close()
		t.Fatalf("hostagent.New: %v", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = ag.Serve(sctx, ln, hostagent.ServerConfig{Logger: logger()}) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = ag.Close()
		_ = drv.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), testutil.Long)
		defer ccancel()
		if last, err := container.New(cctx, dc); err == nil {
			infos, _ := last.Recover(cctx)
			for _, in := range infos {
				_ = last.Destroy(cctx, in.ID)
			}
			_ = last.Close()
			_ = last.Network().RemoveTable()
		}
		for _, sub := range []string{"unified", "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc", ""} {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", sub, dc.CgroupParent))
		}
	})
	return reg.HostID, ag
}

// TestEndToEnd drives a real agent and container driver through the API:
// create → exec → write/read file → pause → resume → exec → streams → delete.
func TestEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, nil)
	ctx := testutil.Context(t, testutil.Long)
	adminTok, adminID, _ := c.signup("e2e-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, adminTok)
	userTok, _, userTeam := c.signup("e2e-user@example.com")

	capsule := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512, "env": map[string]string{"GREETING": "hi"}}, 201).obj(t)
	id := capsule["id"].(string)
	if _, hasReason := capsule["error_reason"]; !strings.HasPrefix(id, "cl-") || capsule["status"] != "running" || capsule["access_token"] == "" || hasReason {
		t.Fatalf("create = %v", capsule)
	}
	base := "/v1/capsules/" + id
	exec := func(cmd string, args ...string) map[string]any {
		t.Helper()
		return c.call("POST", base+"/exec", userTok, map[string]any{"cmd": cmd, "args": args}, 200).obj(t)
	}
	if out := exec("sh", "-c", "echo hello $GREETING"); out["stdout"] != "hello hi\n" || out["exit_code"] != float64(0) {
		t.Fatalf("exec = %v", out)
	}
	if out := exec("sh", "-c", "exit 3"); out["exit_code"] != float64(3) {
		t.Fatalf("exit code = %v", out)
	}

	payload := []byte(strings.Repeat("wrenn file payload\n", 50000)) // ~950 KB: several chunks
	c.call("PUT", base+"/files?path=/tmp/data/file.txt", userTok, payload, 200)
	got := c.call("GET", base+"/files?path=/tmp/data/file.txt", userTok, nil, 200)
	// Bytes from a capsule are a download the browser neither sniffs nor
	// runs on the API's origin.
	for h, want := range map[string]string{
		"Content-Disposition": `attachment; filename=file.txt`, "X-Content-Type-Options": "nosniff",
		"Content-Security-Policy": "sandbox", "Content-Type": "application/octet-stream",
	} {
		if v := got.header.Get(h); v != want {
			t.Errorf("file download: %s = %q, want %q", h, v, want)
		}
	}
	if string(got.body) != string(payload) {
		t.Fatalf("read back %d bytes, want %d", len(got.body), len(payload))
	}
	ls := c.call("GET", base+"/files/list?path=/tmp/data", userTok, nil, 200)
	if !strings.Contains(string(ls.body), "file.txt") {
		t.Fatalf("list = %s", ls.body)
	}
	c.call("POST", base+"/files/mkdir", userTok, map[string]any{"path": "/tmp/newdir/sub"}, 201)
	c.call("DELETE", base+"/files?path=/tmp/newdir", userTok, nil, 204)
	c.call("GET", base+"/files?path=/nope/missing", userTok, nil, 404)

	// Pause, refuse exec while paused, resume, exec again.
	if m := c.call("POST", base+"/pause", userTok, nil, 200).obj(t); m["status"] != "paused" || m["memory_kept"] != true {
		t.Fatalf("pause = %v", m)
	}
	c.call("POST", base+"/exec", userTok, map[string]any{"cmd": "true"}, 409)
	if m := c.call("POST", base+"/resume", userTok, nil, 200).obj(t); m["status"] != "running" || m["memory_kept"] != true {
		t.Fatalf("resume = %v", m)
	}
	if out := exec("cat", "/tmp/data/file.txt"); !strings.HasPrefix(out["stdout"].(string), "wrenn file payload") {
		t.Fatalf("file after resume: %.80v", out)
	}
	// Pause to disk: the API says whether processes and memory were kept
	// (with a working CRIU) or only files (the capsule boots again).
	wantKept := os.Getenv("WRENN_TEST_CRIU") != ""
	if m := c.call("POST", base+"/pause", userTok, map[string]any{"to_disk": true}, 200).obj(t); m["status"] != "hibernated" || m["memory_kept"] != wantKept {
		t.Fatalf("pause to disk = %v, want memory_kept %v", m, wantKept)
	}
	if m := c.call("POST", base+"/resume", userTok, nil, 200).obj(t); m["status"] != "running" || m["memory_kept"] != wantKept {
		t.Fatalf("resume from disk = %v, want memory_kept %v", m, wantKept)
	}
	if m := c.call("GET", base, userTok, nil, 200).obj(t); m["memory_kept"] != nil {
		t.Fatalf("memory_kept outside pause/resume answers: %v", m)
	}
	if out := exec("cat", "/tmp/data/file.txt"); !strings.HasPrefix(out["stdout"].(string), "wrenn file payload") {
		t.Fatalf("file after resume from disk: %.80v", out)
	}
	c.call("POST", base+"/timeout", userTok, map[string]any{"timeout_sec": 600}, 200)

	// WebSocket exec stream with the token in the query.
	wsURL := strings.Replace(c.url, "http://", "ws://", 1) + base
	conn, _, err := websocket.Dial(ctx, wsURL+"/exec/stream?token="+userTok, nil)
	if err != nil {
		t.Fatalf("dial exec stream: %v", err)
	}
	req, _ := json.Marshal(map[string]any{"cmd": "sh", "args": []string{"-c", "echo out; echo err >&2; exit 5"}})
	if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr string
	var exit float64 = -1
	for exit < 0 {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("exec stream read: %v (stdout %q)", err, stdout)
		}
		var ev map[string]any
		_ = json.Unmarshal(b, &ev)
		switch ev["type"] {
		case "stdout":
			stdout += ev["data"].(string)
		case "stderr":
			stderr += ev["data"].(string)
		case "end":
			exit = ev["exit_code"].(float64)
		case "error":
			t.Fatalf("exec stream error: %v", ev)
		}
	}
	if stdout != "out\n" || stderr != "err\n" || exit != 5 {
		t.Fatalf("stream: stdout %q stderr %q exit %v", stdout, stderr, exit)
	}
	conn.CloseNow()

	// PTY: type a command, see its output, end the shell.
	pty, _, err := websocket.Dial(ctx, wsURL+"/pty?cols=100&rows=30&token="+userTok, nil)
	if err != nil {
		t.Fatalf("dial pty: %v", err)
	}
	resize, _ := json.Marshal(map[string]any{"type": "resize", "cols": 120, "rows": 40})
	_ = pty.Write(ctx, websocket.MessageText, resize)
	for _, k := range []string{"ec", "ho pty-", "works", "\n"} { // keystrokes may be coalesced
		if err := pty.Write(ctx, websocket.MessageBinary, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	var screen strings.Builder
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(screen.String(), "pty-works\r\n") && time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		typ, b, err := pty.Read(rctx)
		cancel()
		if err != nil {
			t.Fatalf("pty read: %v (screen %q)", err, screen.String())
		}
		if typ == websocket.MessageBinary {
			screen.Write(b)
		}
	}
	if !strings.Contains(screen.String(), "pty-works") {
		t.Fatalf("pty screen %q", screen.String())
	}
	_ = pty.Write(ctx, websocket.MessageBinary, []byte("exit\n"))
	for {
		_, b, err := pty.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Fatalf("pty closed with %v, want a normal closure", err)
			}
			break
		}
		_ = b
	}

	// PTY re-attach (issue 17, the dashboard's terminal): with ?grace= the
	// shell outlives a dropped socket and ?pid= finds it again, with the
	// output it made meanwhile; without grace a dropped shell is killed at
	// once.
	if _, res, err := websocket.Dial(ctx, wsURL+"/pty?grace=abc&token="+userTok, nil); err == nil || res == nil || res.StatusCode != 400 {
		t.Fatalf("pty with grace=abc: %v %v, want 400", err, res)
	}
	readUntil := func(conn *websocket.Conn, want string) (pid float64) {
		t.Helper()
		var screen strings.Builder
		for !strings.Contains(screen.String(), want) {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			typ, b, err := conn.Read(rctx)
			cancel()
			if err != nil {
				t.Fatalf("pty read: %v (screen %q, want %q)", err, screen.String(), want)
			}
			if typ == websocket.MessageBinary {
				screen.Write(b)
			} else if ev := map[string]any{}; json.Unmarshal(b, &ev) == nil && ev["type"] == "start" {
				pid, _ = ev["pid"].(float64)
			}
		}
		return pid
	}
	g1, _, err := websocket.Dial(ctx, wsURL+"/pty?grace=60&token="+userTok, nil)
	if err != nil {
		t.Fatalf("dial pty with grace: %v", err)
	}
	_ = g1.Write(ctx, websocket.MessageBinary, []byte("MARK=kept-$((40+2)); echo set-$MARK\n"))
	shell := readUntil(g1, "set-kept-42")
	if shell == 0 {
		t.Fatal("no start event with the shell's pid")
	}
	// Output made while no one is attached waits for the next attach.
	_ = g1.Write(ctx, websocket.MessageBinary, []byte("sleep 1; echo late-$MARK\n"))
	time.Sleep(200 * time.Millisecond)
	g1.CloseNow() // the socket drops
	time.Sleep(1500 * time.Millisecond)
	g2, _, err := websocket.Dial(ctx, wsURL+"/pty?grace=60&pid="+itoa(int(shell))+"&token="+userTok, nil)
	if err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	readUntil(g2, "late-kept-42") // made while detached
	_ = g2.Write(ctx, websocket.MessageBinary, []byte("echo again-$MARK\n"))
	readUntil(g2, "again-kept-42")
	_ = g2.Write(ctx, websocket.MessageBinary, []byte("exit\n"))
	for {
		if _, _, err := g2.Read(ctx); err != nil {
			break
		}
	}
	n1, _, err := websocket.Dial(ctx, wsURL+"/pty?token="+userTok, nil)
	if err != nil {
		t.Fatalf("dial pty: %v", err)
	}
	_ = n1.Write(ctx, websocket.MessageBinary, []byte("echo no-grace\n"))
	noGrace := readUntil(n1, "no-grace\r\n")
	n1.CloseNow()
	gone := false
	for deadline := time.Now().Add(20 * time.Second); !gone && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		r := c.call("POST", base+"/exec", userTok, map[string]any{"cmd": "sh", "args": []string{"-c", "kill -0 " + itoa(int(noGrace))}}, 200).obj(t)
		gone = r["exit_code"] != float64(0)
	}
	if !gone {
		t.Fatalf("a shell without grace outlived its dropped socket (pid %v)", noGrace)
	}

	// Background process, listed then killed.
	p := c.call("POST", base+"/processes", userTok, map[string]any{"cmd": "sleep", "args": []string{"300"}, "tag": "sleeper"}, 201).obj(t)
	pid := int(p["pid"].(float64))
	if ps := c.call("GET", base+"/processes", userTok, nil, 200); !strings.Contains(string(ps.body), "sleeper") {
		t.Fatalf("processes = %s", ps.body)
	}
	c.call("DELETE", base+"/processes/"+itoa(pid), userTok, nil, 204)

	// Process stream with stdin over a WebSocket.
	rp := c.call("POST", base+"/processes", userTok, map[string]any{"cmd": "sh", "args": []string{"-c", "read line; echo got:$line"}, "open_stdin": true}, 201).obj(t)
	ps, _, err := websocket.Dial(ctx, wsURL+"/processes/"+itoa(int(rp["pid"].(float64)))+"/stream?token="+userTok, nil)
	if err != nil {
		t.Fatalf("dial process stream: %v", err)
	}
	in, _ := json.Marshal(map[string]string{"type": "stdin", "data": "ping\n"})
	if err := ps.Write(ctx, websocket.MessageText, in); err != nil {
		t.Fatal(err)
	}
	var pout string
	for ended := false; !ended; {
		_, b, err := ps.Read(ctx)
		if err != nil {
			t.Fatalf("process stream: %v (out %q)", err, pout)
		}
		var ev map[string]any
		_ = json.Unmarshal(b, &ev)
		switch ev["type"] {
		case "stdout":
			pout += ev["data"].(string)
		case "end":
			ended = true
		case "error":
			t.Fatalf("process stream error: %v", ev)
		}
	}
	if pout != "got:ping\n" {
		t.Fatalf("process output %q", pout)
	}
	ps.CloseNow()
	c.call("GET", base+"/metrics", userTok, nil, 200)

	// Port proxy: a web server inside the capsule, reached through the
	// control plane, the agent and the capsule network.
	token := capsule["access_token"].(string)
	c.call("PUT", base+"/files?path=/tmp/www/dir/index.html", userTok, []byte("hello from the capsule"), 200)
	c.call("POST", base+"/processes", userTok, map[string]any{"cmd": "httpd", "args": []string{"-f", "-p", "8000", "-h", "/tmp/www"}}, 201)
	var body string
	testutil.Eventually(t, 20*time.Second, func() bool {
		r := c.callProxy("GET", "/proxy/"+id+"/8000/dir/index.html?wrenn_access_token="+token, "", 0)
		body = string(r.body)
		return r.status == 200
	}, "capsule web server reachable through the proxy")
	if body != "hello from the capsule" {
		t.Fatalf("proxied body %q", body)
	}
	// The API's origin serves no capsule ports; without its token a
	// private capsule answers like an unknown one; envd's port is refused.
	c.call("GET", "/proxy/"+id+"/8000/dir/index.html?wrenn_access_token="+token, "", nil, 404)
	noTok := c.callProxy("GET", "/proxy/"+id+"/8000/dir/index.html", "", 404)
	unknown := c.callProxy("GET", "/proxy/cl-unknown0000000000/8000/dir/index.html", "", 404)
	envdPort := c.callProxy("GET", "/proxy/"+id+"/49983/health?wrenn_access_token="+token, "", 404)
	if string(noTok.body) != string(unknown.body) || string(envdPort.body) != string(unknown.body) {
		t.Fatalf("answers differ: no token %s, unknown %s, envd port %s", noTok.body, unknown.body, envdPort.body)
	}
	// busybox httpd redirects a directory without its slash; the Location
	// comes back under the proxy prefix.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	rq, _ := http.NewRequestWithContext(ctx, "GET", c.proxyURL+"/proxy/"+id+"/8000/dir?wrenn_access_token="+token, nil)
	res, err := noFollow.Do(rq)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if loc := res.Header.Get("Location"); res.StatusCode != http.StatusFound || loc != "/proxy/"+id+"/8000/dir/" {
		t.Fatalf("directory redirect: %d Location %q, want 302 to the prefixed path", res.StatusCode, loc)
	}
	c.call("PUT", base+"/public", userTok, map[string]any{"public": true}, 200)
	c.callProxy("GET", "/proxy/"+id+"/8000/dir/index.html", "", 200)
	c.callProxy("GET", "/proxy/"+id+"/49983/health", "", 404)

	// What capsule code receives: a one-shot listener in the capsule
	// records the raw request carrying the caller's Wrenn credentials.
	c.call("POST", base+"/processes", userTok, map[string]any{"cmd": "sh", "args": []string{
		"-c",
		// The answer goes out only once the request's headers are in:
		// an answer sent as the connection opens can reach the proxy's
		// transport before its request does ("unsolicited response on
		// idle channel"), failing the one-shot listener's only chance.
		// nc's input is a FIFO it holds open itself (no EOF, no block).
		`cr=$(printf '\r'); rm -f /tmp/resp; mkfifo /tmp/resp; nc -l -p 8001 0<>/tmp/resp > /tmp/req.txt & ` +
			`until grep -q "^$cr\$" /tmp/req.txt 2>/dev/null; do sleep 0.05; done; ` +
			`printf 'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok' > /tmp/resp; wait`,
	}}, 201)
	apiKey := c.call("POST", "/v1/api-keys", userTok, map[string]any{"name": "proxy probe"}, 201).obj(t)["key"].(string)
	testutil.Eventually(t, 20*time.Second, func() bool {
		rq, _ := http.NewRequestWithContext(ctx, "GET", c.proxyURL+"/proxy/"+id+"/8001/probe?keep=1&token="+apiKey, nil)
		rq.Header.Set("X-API-Key", apiKey)
		rq.Header.Add("Authorization", "Bearer "+userTok)
		rq.Header.Add("Authorization", "Basic dXNlcjo=")
		rq.Header.Set("Cookie", "wrenn_oauth_state=s; app=1")
		res, err := http.DefaultClient.Do(rq)
		if err != nil {
			return false
		}
		_ = res.Body.Close()
		return res.StatusCode == 200
	}, "the recording listener in the capsule answered")
	var rec string
	testutil.Eventually(t, 10*time.Second, func() bool {
		rec = string(c.call("GET", base+"/files?path=/tmp/req.txt", userTok, nil, 0).body)
		return strings.Contains(rec, "\r\n\r\n")
	}, "the request recorded in the capsule")
	for _, leaked := range []string{apiKey, userTok, "wrenn_", "X-Wrenn-", token} {
		if strings.Contains(rec, leaked) {
			t.Errorf("capsule code received %q:\n%s", leaked, rec)
		}
	}
	for _, kept := range []string{"GET /probe?keep=1 HTTP/1.1", "Authorization: Basic dXNlcjo=", "Cookie: app=1"} {
		if !strings.Contains(rec, kept) {
			t.Errorf("capsule code did not receive %q:\n%s", kept, rec)
		}
	}

	// Delete: gone from the store and from the agent.
	c.call("DELETE", base, userTok, nil, 204)
	c.call("GET", base, userTok, nil, 404)

	// A capsule that vanishes behind the control plane's back: a failed
	// pause marks it error, not running.
	id2 := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)["id"].(string)
	h, _ := st.ListHosts(ctx)
	cl := c.srvAgent(h[0])
	if _, err := cl.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id2})); err != nil {
		t.Fatal(err)
	}
	r := c.call("POST", "/v1/capsules/"+id2+"/pause", userTok, nil, 0)
	if r.status < 400 || r.status >= 500 && r.status != http.StatusServiceUnavailable {
		t.Fatalf("pause of a vanished capsule: %d %s", r.status, r.body)
	}
	if m := c.call("GET", "/v1/capsules/"+id2, userTok, nil, 200).obj(t); m["status"] != "error" || !strings.Contains(fmt.Sprint(m["error_reason"]), "vanished") {
		t.Fatalf("vanished capsule status = %v (%v), want error with a reason", m["status"], m["error_reason"])
	}
	c.call("DELETE", "/v1/capsules/"+id2, userTok, nil, 204)

	// The reconciler sees a capsule destroyed on the agent.
	id3 := c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "minimal", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)["id"].(string)
	if _, err := cl.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id3})); err != nil {
		t.Fatal(err)
	}
	if err := c.srv.ReconcileOnce(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if m := c.call("GET", "/v1/capsules/"+id3, userTok, nil, 200).obj(t); m["status"] != "error" || !strings.Contains(fmt.Sprint(m["error_reason"]), "no longer on its host") {
		t.Fatalf("reconciled status = %v (%v), want error with a reason", m["status"], m["error_reason"])
	}
	c.call("DELETE", "/v1/capsules/"+id3, userTok, nil, 204)

	// The life cycle was audited under the team.
	logs, _, err := st.ListAuditLogs(ctx, store.AuditFilter{TeamID: userTeam, ResourceType: "capsule", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, l := range logs {
		if l.ResourceID == id {
			seen[l.Action+"/"+string(l.Status)] = true
		}
	}
	for _, want := range []string{"create/success", "pause/success", "resume/success", "set_public/success", "delete/success"} {
		if !seen[want] {
			t.Errorf("no %s audit entry for %s (have %v)", want, id, seen)
		}
	}
}
