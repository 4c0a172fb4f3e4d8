package fcsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime/vm/fcsim"
	"github.com/wrenn-dev/wrenn/internal/uffd"
)

type client struct {
	t    *testing.T
	http *http.Client
}

func start(t *testing.T, opts fcsim.Options) (*client, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcsim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	s, err := fcsim.Listen(sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Close() })
	return &client{t: t, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}, dir
}

// call sends a request and returns the status and the fault message.
func (c *client) call(method, path, body string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var f struct {
		Fault string `json:"fault_message"`
	}
	_ = json.Unmarshal(b, &f)
	if resp.StatusCode >= 300 && f.Fault == "" {
		c.t.Fatalf("%s %s: status %d without a fault_message: %s", method, path, resp.StatusCode, b)
	}
	if resp.StatusCode < 300 {
		return resp.StatusCode, string(b)
	}
	return resp.StatusCode, f.Fault
}

func (c *client) ok(method, path, body string) string {
	c.t.Helper()
	st, msg := c.call(method, path, body)
	if st != http.StatusNoContent && st != http.StatusOK {
		c.t.Fatalf("%s %s %s: %d %s", method, path, body, st, msg)
	}
	return msg
}

func (c *client) reject(method, path, body, want string) {
	c.t.Helper()
	st, msg := c.call(method, path, body)
	if st != http.StatusBadRequest && st != http.StatusNotFound {
		c.t.Fatalf("%s %s %s: status %d (%s), want a 4xx", method, path, body, st, msg)
	}
	if !strings.Contains(msg, want) {
		c.t.Fatalf("%s %s %s: fault %q, want it to contain %q", method, path, body, msg, want)
	}
	c.t.Logf("rejected as expected: %s %s %s -> %d %q", method, path, body, st, msg)
}

func files(t *testing.T, dir string) (kernel, disk string) {
	t.Helper()
	kernel, disk = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "disk.ext4")
	for _, p := range []string{kernel, disk} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, disk
}

func configure(c *client, dir string, memMiB int, track bool) {
	kernel, disk := files(c.t, dir)
	c.ok("PUT", "/machine-config", fmt.Sprintf(`{"vcpu_count":2,"mem_size_mib":%d,"track_dirty_pages":%v}`, memMiB, track))
	c.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":"console=ttyS0"}`, kernel, kernel))
	c.ok("PUT", "/drives/vda", fmt.Sprintf(`{"drive_id":"vda","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, disk))
	c.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02","tx_rate_limiter":{"bandwidth":{"size":104857600,"refill_time":500,"one_time_burst":104857600}}}`)
	c.ok("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(dir, "v.sock")))
	c.ok("PUT", "/balloon", `{"amount_mib":0,"deflate_on_oom":true,"stats_polling_interval_s":5}`)
	c.ok("PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`)
	c.ok("PUT", "/mmds", `{"wrenn":{"template_id":"base"}}`)
}

// TestMalformedRejected: bodies that break the documented schemas are
// refused with 400 and a fault_message naming the problem.
func TestMalformedRejected(t *testing.T) {
	c, dir := start(t, fcsim.Options{})
	kernel, _ := files(t, dir)
	for _, tc := range []struct{ method, path, body, want string }{
		{"PUT", "/machine-config", `{"mem_size_mib":128}`, "missing field `vcpu_count`"},
		{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "must be in [1, 32]"},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "must be in [1, 32]"},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":128}`, "expected an unsigned integer"},
		{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":128}`, "expected an unsigned integer"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":-1}`, "expected an unsigned integer"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}`, "unknown variant `1G`"},
		{"PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "even number"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"memory":1}`, "unknown field `memory`"},
		{"PUT", "/machine-config", ``, "empty request body"},
		{"PUT", "/machine-config", `[1]`, "must be a JSON object"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}{}`, "trailing data"},
		{"PUT", "/boot-source", `{"boot_args":"x"}`, "missing field `kernel_image_path`"},
		{"PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "kernel file cannot be opened"},
		{"PUT", "/drives/vda", `{"drive_id":"vdb","is_root_device":false,"path_on_host":"` + kernel + `"}`, "does not match"},
		{"PUT", "/drives/vda", `{"drive_id":"vda","path_on_host":"` + kernel + `"}`, "missing field `is_root_device`"},
		{"PUT", "/drives/vda", `{"drive_id":"vda","is_root_device":false,"path_on_host":"` + kernel + `","cache_type":"None"}`, "unknown variant `None`"},
		{"PUT", "/drives/vda", `{"drive_id":"vda","is_root_device":false,"path_on_host":"/nonexistent"}`, "Unable to create the block device"},
		{"PUT", "/drives/vda", `{"drive_id":"vda","is_root_device":false,"path_on_host":"` + kernel + `","rate_limiter":{"bandwidth":{"size":1}}}`, "missing field `rate_limiter.bandwidth.refill_time`"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"zz:00:00:00:00:00"}`, "guest_mac"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":67}`, "must be in [68, 65535]"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, "missing field `host_dev_name`"},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/tmp/x"}`, "must be in [3,"},
		{"PUT", "/balloon", `{"amount_mib":0}`, "missing field `deflate_on_oom`"},
		{"PUT", "/balloon", `{"amount_mib":4096,"deflate_on_oom":true}`, "too large"},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth9"]}`, "does not correspond"},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}`, "ipv4_address"},
		{"PUT", "/mmds", `"text"`, "must be a JSON object"},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
		{"PUT", "/actions", `{}`, "missing field `action_type`"},
		{"PATCH", "/vm", `{"state":"Stopped"}`, "unknown variant `Stopped`"},
		{"PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s"}`, "missing field `mem_file_path`"},
		{"PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m","snapshot_type":"Incremental"}`, "unknown variant `Incremental`"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"Shm","backend_path":"/tmp/u"}}`, "unknown variant `Shm`"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s"}`, "Exactly one of"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m","mem_backend":{"backend_type":"File","backend_path":"/tmp/m"}}`, "Exactly one of"},
		{"PUT", "/logger", `{"level":"Loud"}`, "unknown variant `Loud`"},
		{"PUT", "/no-such-thing", `{}`, "Invalid request method and/or path"},
		{"DELETE", "/machine-config", ``, "Invalid request method and/or path"},
		{"PUT", "/mmds", `{"k":"` + strings.Repeat("x", fcsim.MaxPayload) + `"}`, "larger than the limit"},
	} {
		c.reject(tc.method, tc.path, tc.body, tc.want)
	}
	// Case-insensitive logger level, as documented.
	c.ok("PUT", "/logger", `{"level":"warning"}`)
	c.reject("PUT", "/logger", `{"level":"info"}`, "already initialized")
}

// TestOutOfOrderRejected: the state machine: pre-boot only, post-boot
// only, paused-only snapshots, once-only start, load on a fresh VMM only.
func TestOutOfOrderRejected(t *testing.T) {
	c, dir := start(t, fcsim.Options{})
	c.reject("PATCH", "/vm", `{"state":"Paused"}`, "before starting")
	c.reject("PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}`, "before starting")
	c.reject("PUT", "/actions", `{"action_type":"InstanceStart"}`, "without kernel configuration")
	c.reject("PUT", "/actions", `{"action_type":"FlushMetrics"}`, "metrics system is not initialized")
	c.reject("PATCH", "/mmds", `{"a":1}`, "not initialized")
	configure(c, dir, 64, false)
	c.reject("GET", "/balloon/statistics", ``, "before starting")
	// Load only on a fresh process.
	c.reject("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"Uffd","backend_path":"/tmp/u"}}`, "not allowed after configuring")
	c.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got := c.ok("GET", "/", ""); !strings.Contains(got, `"state":"Running"`) {
		t.Fatalf("GET / after start: %s", got)
	}
	c.reject("PUT", "/actions", `{"action_type":"InstanceStart"}`, "after starting")
	c.reject("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`, "after starting")
	c.reject("PUT", "/boot-source", `{"kernel_image_path":"/x"}`, "after starting")
	c.reject("PUT", "/drives/vdb", `{"drive_id":"vdb","is_root_device":false,"path_on_host":"/x"}`, "after starting")
	c.reject("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1"}`, "after starting")
	c.reject("PUT", "/balloon", `{"amount_mib":0,"deflate_on_oom":true}`, "after starting")
	c.reject("PUT", "/vsock", `{"guest_cid":3,"uds_path":"/tmp/v"}`, "after starting")
	c.reject("PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`, "after starting")
	c.reject("PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"Uffd","backend_path":"/tmp/u"}}`, "not allowed after configuring")
	// Snapshots need a paused VM; Diff needs dirty page tracking.
	c.reject("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, filepath.Join(dir, "s"), filepath.Join(dir, "m")), "not paused")
	c.ok("PATCH", "/vm", `{"state":"Paused"}`)
	c.reject("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":"Diff"}`, filepath.Join(dir, "s"), filepath.Join(dir, "m")), "dirty page tracking disabled")
	// Post-boot calls work now.
	c.ok("PATCH", "/balloon", `{"amount_mib":16}`)
	if got := c.ok("GET", "/balloon/statistics", ""); !strings.Contains(got, `"actual_mib":16`) {
		t.Fatalf("balloon statistics: %s", got)
	}
	c.ok("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`)
	c.reject("PATCH", "/network-interfaces/eth9", `{"iface_id":"eth9"}`, "not found")
	c.ok("PATCH", "/mmds", `{"wrenn":{"capsule_id":"cl-1"}}`)
	if got := c.ok("GET", "/mmds", ""); !strings.Contains(got, `"template_id":"base"`) || !strings.Contains(got, `"capsule_id":"cl-1"`) {
		t.Fatalf("MMDS after merge patch: %s", got)
	}
}

// TestSnapshotUffdRoundTrip: full snapshot of a booted VM, load of it in a
// fresh simulator through a uffd.Server (the UFFD handshake), a diff
// snapshot of the pages written after the resume, and a full snapshot of
// the restored VM matching the expected memory byte for byte; a snapshot
// claiming another Firecracker version is refused.
func TestSnapshotUffdRoundTrip(t *testing.T) {
	const memMiB = 16
	const pages = memMiB << 20 / 4096
	boot := &fcsim.Writes{Seed: 3, Stride: 5, Offset: 1}
	c, dir := start(t, fcsim.Options{WriteOnStart: boot})
	configure(c, dir, memMiB, true)
	c.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	c.ok("PATCH", "/vm", `{"state":"Paused"}`)
	state, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	c.ok("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":"Full"}`, state, mem))
	checkMem(t, mem, pages, func(i int) byte {
		if boot.Has(i) {
			return fcsim.PageByte(boot.Seed, i)
		}
		return 0
	})

	// A fresh VMM loads it through a page server.
	resume := &fcsim.Writes{Seed: 9, Stride: 7, Offset: 0}
	c2, dir2 := start(t, fcsim.Options{WriteOnResume: resume})
	src, err := uffd.OpenFile(mem, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srv, err := uffd.Listen(filepath.Join(dir2, "uffd.sock"), uffd.Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	defer func() { _ = srv.Close(); <-done }()
	// The vsock socket of the snapshot exists (the first VMM holds it):
	// the load overrides it.
	c2.ok("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":%q},"track_dirty_pages":true,"resume_vm":false,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":%q}}`,
		state, srv.Addr(), filepath.Join(dir2, "v.sock")))
	select {
	case <-srv.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the simulator did not complete the UFFD handshake")
	}
	if got := c2.ok("GET", "/", ""); !strings.Contains(got, `"state":"Paused"`) {
		t.Fatalf("after load without resume_vm: %s", got)
	}
	c2.reject("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem), "not allowed")
	c2.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	c2.ok("PATCH", "/vm", `{"state":"Paused"}`)
	diff := filepath.Join(dir2, "mem.diff")
	c2.ok("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":"Diff"}`, filepath.Join(dir2, "vmstate"), diff))
	checkMem(t, diff, pages, func(i int) byte {
		if resume.Has(i) {
			return fcsim.PageByte(resume.Seed, i)
		}
		return 0
	})
	full := filepath.Join(dir2, "mem.full")
	c2.ok("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, filepath.Join(dir2, "vmstate"), full))
	checkMem(t, full, pages, func(i int) byte {
		switch {
		case resume.Has(i):
			return fcsim.PageByte(resume.Seed, i)
		case boot.Has(i):
			return fcsim.PageByte(boot.Seed, i)
		}
		return 0
	})
	if st := srv.Stats(); st.Faults == 0 && st.PrefetchedPages == 0 {
		t.Fatalf("no page came through the page server: %+v", st)
	}

	// Another Firecracker version's snapshot.
	c3, _ := start(t, fcsim.Options{Version: "1.11.0"})
	c3.reject("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem), "Invalid data version")
	// A file that is no microVM state.
	c3.reject("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, mem, mem), "not a microVM state")
}

func checkMem(t *testing.T, path string, pages int, want func(int) byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != pages*4096 {
		t.Fatalf("%s: %d bytes, want %d", path, len(b), pages*4096)
	}
	for i := 0; i < pages; i++ {
		w := bytes.Repeat([]byte{want(i)}, 4096)
		if !bytes.Equal(b[i*4096:(i+1)*4096], w) {
			t.Fatalf("%s: page %d holds %#x..., want %#x", path, i, b[i*4096], want(i))
		}
	}
}

func TestParseJailerArgs(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fc := filepath.Join(dir, "firecracker-v1.10.1")
	if err := os.Symlink(exe, fc); err != nil {
		t.Fatal(err)
	}
	good := []string{
		"--id", "cl-abc-1", "--exec-file", fc, "--uid", "1000", "--gid", "1000", "--chroot-base-dir", dir,
		"--cgroup-version", "2", "--cgroup", "memory.max=1073741824", "--cgroup", "cpu.max=100000 100000", "--", "--api-sock", "/api.sock",
	}
	j, err := fcsim.ParseJailerArgs(good)
	if err != nil {
		t.Fatal(err)
	}
	if j.ChrootDir() != filepath.Join(dir, "firecracker-v1.10.1", "cl-abc-1", "root") || len(j.Extra) != 2 || len(j.Cgroups) != 2 {
		t.Fatalf("parsed %+v", j)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1"}, "required"},
		{[]string{"--id", "bad_id!", "--exec-file", fc, "--uid", "1", "--gid", "1"}, "invalid id"},
		{[]string{"--id", strings.Repeat("a", 65), "--exec-file", fc, "--uid", "1", "--gid", "1"}, "invalid id"},
		{[]string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1"}, "must contain \"firecracker\""},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "x", "--gid", "1"}, "not a number"},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1", "--gid", "1", "--cgroup", "memory"}, "--cgroup"},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1", "--gid", "1", "--cgroup-version", "3"}, "--cgroup-version"},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1", "--gid", "1", "--chroot-base-dir", "rel"}, "not absolute"},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1", "--gid", "1", "--netns", "/nonexistent/ns"}, "netns"},
		{[]string{"--id", "a", "--exec-file", fc, "--uid", "1", "--gid", "1", "--bogus"}, "unknown argument"},
	} {
		if _, err := fcsim.ParseJailerArgs(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.args, err, tc.want)
		}
	}
}
