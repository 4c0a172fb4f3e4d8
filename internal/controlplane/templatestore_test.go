package controlplane_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	wstore "github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// sharedAgent is a host agent whose templates go through a shared
// template store.
type sharedAgent struct {
	hostID    string
	shared    *template.Shared
	templates *template.Store
	drv       *container.Driver
}

// startSharedAgent runs a real agent (container driver) registered with
// memMB of memory (the scheduler prefers the host with the most free
// memory), on subnet 10.<octet>.0.0/16, publishing to and fetching from
// the shared store st. With WRENN_TEST_CRIU set, memory snapshots are on,
// with user namespaces (the default; issue 16: memory templates restored
// into another capsule's id range).
func startSharedAgent(t testing.TB, c *cp, adminTok string, octet, memMB int, st store.Store) sharedAgent {
	t.Helper()
	testutil.RequireRoot(t)
	ctx := testutil.Context(t, testutil.Long)
	dir := t.TempDir()
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
	reg, err := (&hostlink.Client{BaseURL: c.url}).Register(ctx, tok, hostlink.Usage{Address: ln.Addr().String(), VCPUs: 4, MemoryMB: int64(memMB), DiskMB: 100000})
	if err != nil {
		t.Fatal(err)
	}
	tag := "wts" + strings.TrimPrefix(reg.HostID, "host-")[:6]
	criu := os.Getenv("WRENN_TEST_CRIU")
	dc := container.Config{
		StateDir: filepath.Join(dir, "driver"), Templates: *tmpls, EnvdPath: envd,
		DefaultMemoryMB: 128, DefaultDiskSizeMB: 512, PidsLimit: 128, CgroupParent: "/" + tag,
		Network: network.Config{
			// 10.135-139: this package's template-store tests only.
			Subnet: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", octet)),
			Table:  tag, NetnsPrefix: tag + "-",
		},
		Logger:      logger(),
		CRIUPath:    criu,
		DisableCRIU: criu == "",
	}
	drv, err := container.New(ctx, dc)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	shared := &template.Shared{Snaps: &snapshot.Manager{Store: st, TempDir: filepath.Join(dir, "shared-tmp")}, Local: tmpls, Log: logger()}
	if err := os.MkdirAll(shared.Snaps.TempDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ag, err := hostagent.New(ctx, hostagent.Config{
		Driver: drv, StateDir: filepath.Join(dir, "agent"), Templates: tmpls, SharedTemplates: shared,
		DefaultTemplate: "minimal", Secret: reg.Credential, Logger: logger(),
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
	return sharedAgent{hostID: reg.HostID, shared: shared, templates: tmpls, drv: drv}
}

// TestTemplatesAcrossHosts: a capsule on host A with a web server running
// is snapshotted into a team template through the API; the capsule keeps
// running; capsules of the template are then created on host B, which
// fetches it from the S3 template store once however many creates ask at
// the same time, with the files (and, where CRIU works, the web server
// already running, no process started). A template whose archive is
// corrupted in the store is refused with a clear error and leaves nothing
// usable on the host; delete follows the in-use rule and removes the
// shared archive.
func TestTemplatesAcrossHosts(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, nil)
	ctx := testutil.Context(t, 5*time.Minute)
	adminTok, adminID, _ := c.signup("tmplstore-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	s3cfg := s3test.Start(t)
	s3, err := store.NewS3(s3cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A has more memory, so the first capsule lands there.
	a := startSharedAgent(t, c, adminTok, 135, 16384, s3)
	b := startSharedAgent(t, c, adminTok, 136, 8192, s3)
	withMemory := os.Getenv("WRENN_TEST_CRIU") != ""
	if !withMemory {
		t.Log("WRENN_TEST_CRIU is not set: memory templates are not checked, only files (make test sets it)")
	}
	userTok, _, userTeam := c.signup("tmplstore-user@example.com")
	res := map[string]any{"memory_mb": 128, "disk_size_mb": 512}
	create := func(tmpl string, want int) map[string]any {
		t.Helper()
		body := map[string]any{"template": tmpl}
		for k, v := range res {
			body[k] = v
		}
		return c.call("POST", "/v1/capsules", userTok, body, want).obj(t)
	}
	exec := func(id, cmd string, args ...string) map[string]any {
		t.Helper()
		return c.call("POST", "/v1/capsules/"+id+"/exec", userTok, map[string]any{"cmd": cmd, "args": args}, 200).obj(t)
	}
	// GET the web server from inside the capsule (busybox wget).
	fetch := func(id string) string {
		t.Helper()
		out := exec(id, "wget", "-q", "-O", "-", "http://127.0.0.1:8000/index.html")
		if out["exit_code"] != float64(0) {
			t.Logf("wget in %s: %v", id, out)
		}
		return fmt.Sprint(out["stdout"])
	}

	src := create("minimal", 201)
	srcID := src["id"].(string)
	if row, err := st.GetCapsule(ctx, userTeam, srcID); err != nil || row.HostID != a.hostID {
		t.Fatalf("first capsule on %v (%v), want host A %s", row.HostID, err, a.hostID)
	}
	c.call("PUT", "/v1/capsules/"+srcID+"/files?path=/srv/index.html", userTok, []byte("served from memory"), 200)
	c.call("POST", "/v1/capsules/"+srcID+"/processes", userTok, map[string]any{"cmd": "httpd", "args": []string{"-f", "-p", "8000", "-h", "/srv"}}, 201)
	testutil.Eventually(t, 20*time.Second, func() bool { return fetch(srcID) == "served from memory" }, "web server in the source capsule")

	// Bad input first: a bad name, an unknown capsule, a name taken.
	c.call("POST", "/v1/capsules/"+srcID+"/snapshot", userTok, map[string]any{"name": "Bad Name"}, 400)
	c.call("POST", "/v1/capsules/cl-doesnotexist/snapshot", userTok, map[string]any{"name": "web"}, 404)

	snap := c.call("POST", "/v1/capsules/"+srcID+"/snapshot", userTok, map[string]any{"name": "web:v1"}, 201).obj(t)
	if snap["name"] != "web:v1" || snap["shared"] != true || snap["public"] != false {
		t.Fatalf("snapshot = %v", snap)
	}
	if withMemory && snap["memory"] != true {
		t.Fatalf("snapshot kept no memory with CRIU on: %v", snap)
	}
	c.call("POST", "/v1/capsules/"+srcID+"/snapshot", userTok, map[string]any{"name": "web:v1"}, 409)
	// The E2B-compatible routes are the same snapshot.
	e2b := func(method, path string, body string, want int) string {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, c.url+"/e2b"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+userTok)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != want {
			t.Fatalf("%s /e2b%s: %d %s, want %d", method, path, res.StatusCode, b, want)
		}
		return string(b)
	}
	if got := e2b("POST", "/sandboxes/"+srcID+"/snapshots", `{"name":"e2b-snap"}`, 201); !strings.Contains(got, `"snapshotID":"e2b-snap"`) {
		t.Fatalf("E2B createSnapshot = %s", got)
	}
	if got := e2b("GET", "/snapshots?sandboxID="+srcID, "", 200); !strings.Contains(got, `"web:v1"`) || !strings.Contains(got, `"e2b-snap"`) {
		t.Fatalf("E2B listSnapshots = %s", got)
	}
	// The source capsule kept running, its server too.
	if got := fetch(srcID); got != "served from memory" {
		t.Fatalf("source capsule after the snapshot serves %q", got)
	}
	if _, err := a.templates.Get(snap["id"].(string)); err != nil {
		t.Fatalf("host A lacks the template it made: %v", err)
	}
	if _, err := b.templates.Get(snap["id"].(string)); err == nil {
		t.Fatal("host B has the template before any create asked for it")
	}

	// A pure import (a plain rootfs tarball) made on host A goes to the
	// shared store too: recorded with a checksum, so not pinned to A.
	impTar := plainRootfsTar(t, a.templates, "minimal", "imported on A")
	ib := c.postBuild(userTok, buildForm{name: "imp", fileField: "image", file: impTar}, 201).obj(t)
	if got := c.waitTeamBuild(userTok, ib["id"].(string)); got["status"] != "succeeded" {
		t.Fatalf("import build = %v", got)
	}
	impRow, err := st.GetTemplateByName(ctx, userTeam, "imp")
	if err != nil || impRow.Checksum == "" {
		t.Fatalf("imported template = %+v, %v: want a shared-store checksum", impRow, err)
	}

	// Host A goes away; capsules of the template go to B, which fetches
	// it once for three concurrent creates.
	if err := st.SetHostStatus(ctx, a.hostID, wstore.HostUnavailable); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ids := make([]string, 3)
	for i := range ids {
		wg.Go(func() {
			ids[i] = create("web:v1", 201)["id"].(string)
		})
	}
	wg.Wait()
	if n := b.shared.Fetches(); n != 1 {
		t.Fatalf("host B downloaded the template %d times for 3 concurrent creates, want 1", n)
	}
	for _, id := range ids {
		capRow, err := st.GetCapsule(ctx, userTeam, id)
		if err != nil {
			t.Fatal(err)
		}
		if capRow.HostID != b.hostID {
			t.Fatalf("capsule %s on %s, want host B %s", id, capRow.HostID, b.hostID)
		}
		if out := exec(id, "cat", "/srv/index.html"); out["stdout"] != "served from memory" {
			t.Fatalf("capsule of the template on B: files = %v", out)
		}
		if withMemory {
			// Nothing was started: the server came back with the memory.
			if got := fetch(id); got != "served from memory" {
				t.Fatalf("capsule %s from a memory template: the web server is not running (%q)", id, got)
			}
			ps := c.call("GET", "/v1/capsules/"+id+"/processes", userTok, nil, 200)
			if !strings.Contains(string(ps.body), "httpd") {
				t.Fatalf("processes of a capsule from a memory template: %s", ps.body)
			}
		}
	}
	// The import, made on whichever host took the build, runs on B.
	imp := create("imp", 201)["id"].(string)
	if out := exec(imp, "cat", "/srv/index.html"); out["stdout"] != "imported on A" {
		t.Fatalf("capsule of the imported template on B: %v", out)
	}
	c.call("DELETE", "/v1/capsules/"+imp, userTok, nil, 204)

	// The name resolves with or without :latest only for the untagged name.
	c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "web"}, 404)

	// Delete, with the existing in-use rule: the row goes at once (no new
	// capsule can name the template), and so does the shared archive —
	// through host B, since the host that made it is unavailable — while
	// B keeps its copy for the capsules that use it.
	tid := snap["id"].(string)
	c.call("DELETE", "/v1/templates/"+tid, userTok, nil, 204)
	c.call("POST", "/v1/capsules", userTok, map[string]any{"template": "web:v1"}, 404)
	if _, err := s3.GetHeader(ctx, template.SharedName(tid)); err == nil {
		t.Fatal("the deleted template's archive is still in the shared store")
	}
	if _, err := b.templates.Get(tid); err != nil {
		t.Fatalf("host B dropped the copy its capsules use: %v", err)
	}
	if out := exec(ids[0], "cat", "/srv/index.html"); out["stdout"] != "served from memory" {
		t.Fatalf("capsule of a deleted template: %v", out)
	}
	for _, id := range ids {
		c.call("DELETE", "/v1/capsules/"+id, userTok, nil, 204)
	}
	// A public template is only the admins' to delete.
	c.call("DELETE", "/v1/templates/"+mustTemplateID(ctx, t, st, userTeam, "minimal"), userTok, nil, 403)

	// A template whose archive is damaged in the store.
	if err := st.SetHostStatus(ctx, a.hostID, wstore.HostOnline); err != nil {
		t.Fatal(err)
	}
	bad := c.call("POST", "/v1/capsules/"+srcID+"/snapshot", userTok, map[string]any{"name": "damaged", "memory": false}, 201).obj(t)
	if bad["memory"] == true {
		t.Fatalf("memory kept although not asked for: %v", bad)
	}
	corruptSharedTemplate(ctx, t, s3, s3cfg, bad["id"].(string))
	if err := st.SetHostStatus(ctx, a.hostID, wstore.HostUnavailable); err != nil {
		t.Fatal(err)
	}
	r := create("damaged", 503)
	if msg, _ := r["message"].(string); !strings.Contains(msg, "corrupt") {
		t.Fatalf("create from a damaged template: %v", r)
	}
	if _, err := b.templates.Get(bad["id"].(string)); err == nil {
		t.Fatal("a damaged template became usable on host B")
	}
	ents, _ := os.ReadDir(b.templates.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left in host B's template directory: %s", e.Name())
		}
	}
}

// plainRootfsTar is template base's root from ts with /srv/index.html
// holding index, as a plain root filesystem tarball.
func plainRootfsTar(t *testing.T, ts *template.Store, base, index string) []byte {
	t.Helper()
	tp, err := ts.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := osexec.Command("cp", "-a", tp.Rootfs, root).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(root, "srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "srv", "index.html"), []byte(index), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := osexec.Command("tar", "-C", root, "--numeric-owner", "-cf", "-", ".").Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	return out
}

// corruptSharedTemplate flips a byte in the middle of the data of template
// id's archive in the S3 store.
func corruptSharedTemplate(ctx context.Context, t *testing.T, s3 *store.S3, cfg store.S3Config, id string) {
	t.Helper()
	h, err := snapshot.ReadHeader(ctx, s3, template.SharedName(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Builds) == 0 {
		t.Fatal("template archive has no data")
	}
	key := cfg.Prefix + "builds/" + h.Builds[0].ID.String()
	obj, err := s3.Client().GetObject(ctx, cfg.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(obj)
	_ = obj.Close()
	if err != nil || len(data) < 3 {
		t.Fatalf("read %s: %d bytes, %v", key, len(data), err)
	}
	data[len(data)/3] ^= 0x5a
	if _, err := s3.Client().PutObject(ctx, cfg.Bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

func mustTemplateID(ctx context.Context, t *testing.T, st wstore.Store, team, name string) string {
	t.Helper()
	tm, err := st.GetTemplateByName(ctx, team, name)
	if err != nil {
		t.Fatal(err)
	}
	return tm.ID
}
