package controlplane_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// volumeAgent is a registered host agent whose snapshot store (pause to
// disk, volumes) is the shared store st, on subnet 10.2.<64+32*half>.0/19
// (the volumes tests' range).
type volumeAgent struct {
	hostID   string
	agentDir string
}

func startVolumeAgent(t *testing.T, c *cp, adminTok string, half, memMB int, st store.Store) volumeAgent {
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
	tag := "wtv" + strings.TrimPrefix(reg.HostID, "host-")[:6]
	tmp := filepath.Join(dir, "snap-tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	dc := container.Config{
		StateDir: filepath.Join(dir, "driver"), Templates: *tmpls, EnvdPath: envd,
		DefaultMemoryMB: 128, DefaultDiskSizeMB: 512, PidsLimit: 128, CgroupParent: "/" + tag,
		Network: network.Config{
			Subnet: netip.MustParsePrefix(fmt.Sprintf("10.2.%d.0/19", 64+32*half)),
			Table:  tag, NetnsPrefix: tag + "-",
		},
		Snapshots:   &snapshot.Manager{Store: st, TempDir: tmp},
		Logger:      logger(),
		DisableCRIU: true,
	}
	drv, err := container.New(ctx, dc)
	if err != nil {
		t.Fatalf("container.New: %v", err)
	}
	agentDir := filepath.Join(dir, "agent")
	ag, err := hostagent.New(ctx, hostagent.Config{
		Driver: drv, StateDir: agentDir, Templates: tmpls, DefaultTemplate: "minimal", Secret: reg.Credential, Logger: logger(),
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
	return volumeAgent{hostID: reg.HostID, agentDir: agentDir}
}

// TestVolumesAcrossHosts (issue 23, volumes): a volume written in a
// capsule on host A survives the capsule, travels through the S3
// snapshot store and is read back by read-only mounts on host B; a second
// read-write mount is refused; the quota holds (ENOSPC inside, 507
// through the file route); the file routes work with and without a
// capsule holding the volume; delete is refused while mounted; nothing is
// left on the hosts.
func TestVolumesAcrossHosts(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.SQLite(t)
	c := startCP(t, st, nil)
	ctx := testutil.Context(t, 5*time.Minute)
	adminTok, adminID, _ := c.signup("vol-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	s3, err := store.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	a := startVolumeAgent(t, c, adminTok, 0, 16384, s3) // more memory: capsules land here first
	b := startVolumeAgent(t, c, adminTok, 1, 8192, s3)
	tok, _, _ := c.signup("vol-user@example.com")
	otherTok, _, _ := c.signup("vol-other@example.com")

	c.call("POST", "/v1/volumes", tok, map[string]any{"name": "work", "size_mb": 32}, 201)
	create := func(want int, mem int, mounts ...map[string]any) map[string]any {
		t.Helper()
		return c.call("POST", "/v1/capsules", tok, map[string]any{"template": "minimal", "memory_mb": mem, "disk_size_mb": 512, "volume_mounts": mounts}, want).obj(t)
	}
	sh := func(id, script string) map[string]any {
		t.Helper()
		return c.call("POST", "/v1/capsules/"+id+"/exec", tok, map[string]any{"cmd": "/bin/sh", "args": []string{"-c", script}}, 200).obj(t)
	}
	rw := map[string]any{"name": "work", "path": "/work"}
	ro := map[string]any{"name": "work", "path": "/work", "read_only": true}

	c1 := create(201, 128, rw)
	id1 := c1["id"].(string)
	if c1["host_id"] != a.hostID {
		t.Fatalf("first capsule on %v, want host A", c1["host_id"])
	}
	if out := sh(id1, "echo written on A > /work/f && cat /work/f"); out["stdout"] != "written on A\n" {
		t.Fatalf("write in capsule: %v", out)
	}
	// The quota holds inside the capsule.
	if out := sh(id1, "dd if=/dev/zero of=/work/big bs=1M count=40 2>&1; rm -f /work/big"); !strings.Contains(fmt.Sprint(out["stdout"]), "No space left on device") {
		t.Fatalf("dd past the quota: %v", out)
	}
	// One read-write mount at a time; no read-only mount beside it.
	create(409, 128, rw)
	create(409, 128, ro)
	// Another team cannot see or mount it.
	c.call("GET", "/v1/volumes/work", otherTok, nil, 404)
	c.call("POST", "/v1/capsules", otherTok, map[string]any{"template": "minimal", "volume_mounts": []any{rw}}, 404)
	v := c.call("GET", "/v1/volumes/work", tok, nil, 200).obj(t)
	if v["location"] != "host" || v["host_id"] != a.hostID || len(v["mounts"].([]any)) != 1 {
		t.Fatalf("volume while mounted: %v", v)
	}
	c.call("DELETE", "/v1/volumes/work", tok, nil, 409)
	// The file route writes into the mounted volume (on A); the capsule
	// sees it at once; a file larger than the volume is 507.
	c.call("PUT", "/v1/volumes/work/files?path=/api/hello.txt", tok, []byte("from the API"), 200)
	if out := sh(id1, "cat /work/api/hello.txt"); out["stdout"] != "from the API" {
		t.Fatalf("API write seen in capsule: %v", out)
	}
	c.call("PUT", "/v1/volumes/work/files?path=/big", tok, make([]byte, 33<<20), 507)

	c.call("DELETE", "/v1/capsules/"+id1, tok, nil, 204)
	if v := c.call("GET", "/v1/volumes/work", tok, nil, 200).obj(t); v["location"] != "store" {
		t.Fatalf("volume after its capsule went: %v", v)
	}

	// Fill A (placement by free memory) so the next capsules go to B,
	// which fetches the volume from the S3 store.
	filler := create(201, 10000)
	if filler["host_id"] != a.hostID {
		t.Fatalf("filler on %v, want A", filler["host_id"])
	}
	r1 := create(201, 128, ro)
	if r1["host_id"] != b.hostID {
		t.Fatalf("read-only capsule on %v, want host B", r1["host_id"])
	}
	// Read-only mounts share the volume (pinned to its host).
	r2 := create(201, 128, map[string]any{"name": "work", "path": "/data/w", "read_only": true})
	if r2["host_id"] != b.hostID {
		t.Fatalf("second read-only capsule on %v, want host B", r2["host_id"])
	}
	if out := sh(r1["id"].(string), "cat /work/f /work/api/hello.txt"); out["stdout"] != "written on A\nfrom the API" {
		t.Fatalf("read back on B: %v", out)
	}
	if out := sh(r2["id"].(string), "cat /data/w/f; echo x > /data/w/g"); out["stdout"] != "written on A\n" || out["exit_code"] == float64(0) {
		t.Fatalf("read-only mount on B: %v", out)
	}
	create(409, 128, rw) // still no read-write mount beside them
	list := c.call("GET", "/v1/volumes/work/files/list?path=/", tok, nil, 200).obj(t)
	if n := len(list["entries"].([]any)); n != 2 {
		t.Fatalf("list: %v", list)
	}
	for _, id := range []string{r1["id"].(string), r2["id"].(string), filler["id"].(string)} {
		c.call("DELETE", "/v1/capsules/"+id, tok, nil, 204)
	}
	// Without any capsule: read, remove, list through any host.
	if got := string(c.call("GET", "/v1/volumes/work/files?path=/f", tok, nil, 200).body); got != "written on A\n" {
		t.Fatalf("read without a capsule: %q", got)
	}
	c.call("DELETE", "/v1/volumes/work/files?path=/api", tok, nil, 204)
	c.call("GET", "/v1/volumes/work/files?path=/api/hello.txt", tok, nil, 404)
	c.call("GET", "/v1/volumes/work/files?path=/../etc/passwd", tok, nil, 400)
	c.call("DELETE", "/v1/volumes/work", tok, nil, 204)
	c.call("GET", "/v1/volumes/work", tok, nil, 404)

	// Nothing left on the hosts: no local copies, mounts or loop devices.
	for _, h := range []volumeAgent{a, b} {
		es, _ := os.ReadDir(filepath.Join(h.agentDir, "volumes"))
		if len(es) > 0 {
			t.Errorf("volumes left on host %s: %v", h.hostID, es)
		}
		if ms, _ := rootfs.MountsUnder(h.agentDir); len(ms) > 0 {
			t.Errorf("mounts left on host %s: %v", h.hostID, ms)
		}
	}
}
