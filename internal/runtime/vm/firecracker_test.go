package vm_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm"
	"github.com/wrenn-dev/wrenn/internal/runtime/vm/fcsim"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// The Firecracker backend against the API simulator (fcsim): everything
// that does not need a guest to execute. The simulator is a program the
// backend execs in place of firecracker (and of the jailer).

var (
	fcsimOnce sync.Once
	fcsimBin  string // .../firecracker (the simulator)
	jailerBin string // .../jailer (the same program: the fake jailer)
	fcsimErr  error
)

// buildFCSim builds the simulator once per test binary into a fixed
// directory (replaced atomically, so concurrent runs share it and nothing
// accumulates in /tmp).
func buildFCSim(t *testing.T) {
	t.Helper()
	fcsimOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			fcsimErr = err
			return
		}
		dir := filepath.Join(os.TempDir(), "wrenn-fcsim")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fcsimErr = err
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf(".build-%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-o", tmp, "./internal/runtime/vm/fcsim/cmd/fcsim")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fcsimErr = fmt.Errorf("build fcsim: %w: %s", err, out)
			return
		}
		fcsimBin, jailerBin = filepath.Join(dir, "firecracker"), filepath.Join(dir, "jailer")
		// The same program under both names: two hard links of one file.
		if err := os.Link(tmp, tmp+"-j"); err != nil {
			fcsimErr = err
			return
		}
		fcsimErr = errors.Join(os.Rename(tmp+"-j", jailerBin), os.Rename(tmp, fcsimBin))
	})
	if fcsimErr != nil {
		t.Fatal(fcsimErr)
	}
}

func fcLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()}))
}

// fcSetup is one VM's inputs: fake kernel files, disks, a RAM file in
// /dev/shm (another file system than /tmp: bind mounts in a jail).
type fcSetup struct {
	dir, memDir string
	spec        vm.MachineSpec
}

func newFCSetup(t *testing.T, memMiB int) *fcSetup {
	t.Helper()
	s := &fcSetup{dir: t.TempDir()}
	s.memDir = filepath.Join("/dev/shm", fmt.Sprintf("wrenn-fctest-%d-%d", os.Getpid(), seq.Add(1)))
	if err := os.MkdirAll(s.memDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(s.memDir) })
	kdir := filepath.Join(s.dir, "kernel")
	capDir := filepath.Join(s.dir, fmt.Sprintf("fc%d", seq.Add(1)))
	for _, d := range []string{kdir, capDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"vmlinuz", "vmlinux", "initramfs.cpio", "image.ext4", "disk.ext4", "envd.ext4"} {
		p := filepath.Join(kdir, f)
		if err := os.WriteFile(p, []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.spec = vm.MachineSpec{
		Dir: capDir, Kernel: filepath.Join(kdir, "vmlinuz"), Initrd: filepath.Join(kdir, "initramfs.cpio"),
		Cmdline: "console=ttyS0 panic=-1", VCPUs: 2, MemoryMB: memMiB,
		MemPath: filepath.Join(s.memDir, "vm.mem"),
		Disks: []vm.Disk{
			{Path: filepath.Join(kdir, "image.ext4"), ReadOnly: true},
			{Path: filepath.Join(kdir, "disk.ext4")},
			{Path: filepath.Join(kdir, "envd.ext4"), ReadOnly: true},
		},
		Tap: "tap0", MAC: "06:00:a9:fe:00:15", BalloonStatsSeconds: 5, KVM: true,
		Metadata: map[string]string{"template_id": "base", "capsule_id": "cl-test"},
	}
	return s
}

func newFC(t *testing.T, jailer *vm.JailerConfig) *vm.Firecracker {
	t.Helper()
	buildFCSim(t)
	f, err := vm.NewFirecracker(testutil.Context(t, testutil.Short), fcsimBin, jailer, fcLogger())
	if err != nil {
		t.Fatalf("NewFirecracker: %v", err)
	}
	run, err := os.MkdirTemp("", "wfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(run) })
	f.RunDir = run
	return f
}

// api is a plain HTTP client on a VM's API socket (what the test reads
// back from the simulator).
func api(sock string) func(path string, out any) error {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return func(path string, out any) error {
		resp, err := c.Get("http://localhost" + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return json.Unmarshal(b, out)
	}
}

func TestFirecrackerVersion(t *testing.T) {
	for out, want := range map[string]string{
		"Firecracker v1.10.1\n\n":                              "1.10.1",
		"Firecracker v1.7.0\n\nSupported snapshot data format": "1.7.0",
	} {
		v, err := vm.ParseFirecrackerVersion(out)
		if err != nil || fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) != want {
			t.Errorf("%q: %v %v", out, v, err)
		}
	}
	if _, err := vm.ParseFirecrackerVersion("qemu-system-x86_64 8.2"); err == nil {
		t.Error("a non-Firecracker version line parsed")
	}
	buildFCSim(t)
	ctx := testutil.Context(t, testutil.Short)
	for _, tc := range []struct {
		name, bin, env, val, want string
	}{
		{"missing", "/nonexistent/firecracker", "", "", "no such file"},
		{"not executable", notExec(t), "", "", "not an executable"},
		{"too old", fcsimBin, fcsim.EnvVersion, "1.4.1", "is v1.4.1; Wrenn drives v1.8.0 up to v1.x"},
		{"too new", fcsimBin, fcsim.EnvVersion, "2.0.0", "is v2.0.0"},
		{"garbage", fcsimBin, fcsim.EnvBrokenVersion, "firecracker, some build", "unrecognised version output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(tc.env, tc.val)
			}
			_, err := vm.NewFirecracker(ctx, tc.bin, nil, fcLogger())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
}

// TestFirecrackerBoot: the named boot steps produce the documented
// configuration (read back from the simulator), the machine's controls
// work, Stop leaves nothing.
func TestFirecrackerBoot(t *testing.T) {
	f := newFC(t, nil)
	f.TxRateLimit = &vm.TxRateLimitSeed
	s := newFCSetup(t, 64)
	ctx := testutil.Context(t, testutil.Short)
	m, err := f.Launch(ctx, s.spec)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	stopOnCleanup(t, m)
	work := filepath.Join(f.RunDir, filepath.Base(s.spec.Dir))
	get := api(filepath.Join(work, "api.sock"))
	var cfg struct {
		Machine struct {
			VCPU  int  `json:"vcpu_count"`
			Mem   int  `json:"mem_size_mib"`
			Track bool `json:"track_dirty_pages"`
		} `json:"machine-config"`
		Boot struct {
			Kernel string `json:"kernel_image_path"`
			Initrd string `json:"initrd_path"`
			Args   string `json:"boot_args"`
		} `json:"boot-source"`
		Drives []struct {
			ID   string `json:"drive_id"`
			Path string `json:"path_on_host"`
			RO   bool   `json:"is_read_only"`
		} `json:"drives"`
		Net []struct {
			Tap string `json:"host_dev_name"`
			MAC string `json:"guest_mac"`
			Tx  struct {
				BW vm.TokenBucket `json:"bandwidth"`
			} `json:"tx_rate_limiter"`
		} `json:"network-interfaces"`
		Balloon struct {
			Deflate bool `json:"deflate_on_oom"`
			Stats   int  `json:"stats_polling_interval_s"`
		} `json:"balloon"`
		Vsock struct {
			CID int    `json:"guest_cid"`
			UDS string `json:"uds_path"`
		} `json:"vsock"`
		Mmds struct {
			Ifaces []string `json:"network_interfaces"`
		} `json:"mmds-config"`
	}
	if err := get("/vm/config", &cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("configuration: %+v", cfg)
	switch {
	case cfg.Machine.VCPU != 2 || cfg.Machine.Mem != 64 || !cfg.Machine.Track:
		t.Errorf("machine-config %+v", cfg.Machine)
	case cfg.Boot.Kernel != "vmlinux" || cfg.Boot.Initrd != "initrd" || cfg.Boot.Args != s.spec.Cmdline:
		t.Errorf("boot-source %+v", cfg.Boot)
	case len(cfg.Drives) != 3 || cfg.Drives[0].Path != "vda" || !cfg.Drives[0].RO || cfg.Drives[1].RO || !cfg.Drives[2].RO:
		t.Errorf("drives %+v", cfg.Drives)
	case len(cfg.Net) != 1 || cfg.Net[0].Tap != "tap0" || cfg.Net[0].MAC != s.spec.MAC || cfg.Net[0].Tx.BW != vm.TxRateLimitSeed:
		t.Errorf("network-interfaces %+v", cfg.Net)
	case !cfg.Balloon.Deflate || cfg.Balloon.Stats != 5:
		t.Errorf("balloon %+v", cfg.Balloon)
	case cfg.Vsock.CID != 3 || cfg.Vsock.UDS != "v.sock":
		t.Errorf("vsock %+v", cfg.Vsock)
	case !slices.Equal(cfg.Mmds.Ifaces, []string{"eth0"}):
		t.Errorf("mmds-config %+v", cfg.Mmds)
	}
	// The kernel Firecracker gets is the vmlinux beside the vmlinuz.
	if tgt, _ := os.Readlink(filepath.Join(work, "vmlinux")); filepath.Base(tgt) != "vmlinux" {
		t.Errorf("vmlinux links to %s", tgt)
	}
	var mmds map[string]map[string]string
	if err := get("/mmds", &mmds); err != nil || mmds["wrenn"]["template_id"] != "base" {
		t.Errorf("MMDS %v %v", mmds, err)
	}
	if ok, err := m.Running(ctx); !ok || err != nil {
		t.Fatalf("Running after boot: %v %v", ok, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.Running(ctx); ok {
		t.Fatal("running after Pause")
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.SetBalloon(ctx, 48<<20); err != nil {
		t.Fatal(err)
	}
	b, err := m.Balloon(ctx)
	if err != nil || b.ActualBytes != 48<<20 || b.TotalBytes != 64<<20 {
		t.Fatalf("Balloon %+v %v", b, err)
	}
	if m.GuestStopped(ctx) {
		t.Fatal("GuestStopped on a live VM")
	}
	// The console is the VMM's output, each read returning what is new.
	if c := m.Console(ctx); !strings.Contains(c, "API simulator serving") {
		t.Fatalf("Console %q", c)
	}
	if c := m.Console(ctx); c != "" {
		t.Fatalf("second Console read repeats output: %q", c)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Fatalf("VM directory left: %v", err)
	}
	if !fileGone(m.PID()) {
		t.Fatalf("process %d left", m.PID())
	}
}

func notExec(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// stopOnCleanup ends m when the test ends, whatever happened (Stop is
// idempotent).
func stopOnCleanup(t *testing.T, m vm.Machine) {
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
}

func fileGone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return os.IsNotExist(err)
}

// TestFirecrackerSnapshot: Full snapshot into the RAM file; restore with
// the page server (UFFD handshake), resume, Diff snapshot laid over the
// RAM file: byte for byte what the "guest" wrote; another version's
// snapshot is refused with nothing left and the snapshot kept.
func TestFirecrackerSnapshot(t *testing.T) {
	boot := fcsim.Writes{Seed: 5, Stride: 3, Offset: 2}
	resume := fcsim.Writes{Seed: 11, Stride: 10, Offset: 7}
	t.Setenv(fcsim.EnvWriteOnStart, fmt.Sprintf("%d,%d,%d", boot.Seed, boot.Stride, boot.Offset))
	t.Setenv(fcsim.EnvWriteOnResume, fmt.Sprintf("%d,%d,%d", resume.Seed, resume.Stride, resume.Offset))
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("FullSnapshots=%v", full), func(t *testing.T) {
			f := newFC(t, nil)
			f.FullSnapshots = full
			s := newFCSetup(t, 32)
			snapshotRoundTrip(t, f, s, boot, resume, func() string { return filepath.Join(f.RunDir, filepath.Base(s.spec.Dir)) })
		})
	}
}

func snapshotRoundTrip(t *testing.T, f *vm.Firecracker, s *fcSetup, boot, resume fcsim.Writes, work func() string) {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	pages := s.spec.MemoryMB << 20 / 4096
	m, err := f.Launch(ctx, s.spec)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	stopOnCleanup(t, m)
	state := filepath.Join(s.dir, "state")
	save := func(m vm.Machine) {
		t.Helper()
		out, err := os.Create(state)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SaveState(ctx, out); err != nil {
			t.Fatalf("SaveState: %v", err)
		}
		_ = out.Close()
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	save(m)
	checkPages(t, s.spec.MemPath, pages, func(i int) byte {
		if boot.Has(i) {
			return fcsim.PageByte(boot.Seed, i)
		}
		return 0
	})
	if _, err := os.Stat(work()); !os.IsNotExist(err) {
		t.Fatalf("VM directory left after Stop: %v", err)
	}

	restore := func() (vm.Machine, error) {
		in, err := os.Open(state)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		spec := s.spec
		spec.Incoming = in
		return f.Launch(ctx, spec)
	}
	m, err = restore()
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	stopOnCleanup(t, m)
	if ok, _ := m.Running(ctx); ok {
		t.Fatal("a restored VM runs before Resume")
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// Background prefetch finishes: the marker an agent restart checks goes.
	deadline := time.Now().Add(testutil.Short)
	for fileExistsT(filepath.Join(work(), "uffd-pending")) {
		if time.Now().After(deadline) {
			t.Fatal("prefetch did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The balloon takes the top 4 MiB, as before a pause: Firecracker
	// drops those pages (MADV_DONTNEED), the page server records them
	// removed and serves zeros there from then on. A diff writes only the
	// dirty ones among them (zeros); a full snapshot reads them all (zeros).
	if err := m.SetBalloon(ctx, int64(s.spec.MemoryMB-4)<<20); err != nil {
		t.Fatal(err)
	}
	top := (s.spec.MemoryMB - 4) << 20 / 4096
	save(m)
	checkPages(t, s.spec.MemPath, pages, func(i int) byte {
		switch {
		case i >= top && (f.FullSnapshots || resume.Has(i)):
			return 0
		case resume.Has(i):
			return fcsim.PageByte(resume.Seed, i)
		case boot.Has(i):
			return fcsim.PageByte(boot.Seed, i)
		}
		return 0
	})
	if fileExistsT(s.spec.MemPath+".diff") || fileExistsT(s.spec.MemPath+".next") {
		t.Fatal("side file left")
	}

	// Another Firecracker version: refused, nothing left, snapshot kept.
	before, _ := os.ReadFile(state)
	memBefore, _ := os.ReadFile(s.spec.MemPath)
	t.Setenv(fcsim.EnvVersion, "1.9.0")
	if m, err := restore(); err == nil || !strings.Contains(err.Error(), "Invalid data version") {
		if m != nil {
			stopOnCleanup(t, m)
		}
		t.Fatalf("restore on another version: %v", err)
	} else {
		t.Logf("refused as expected: %v", err)
	}
	if _, err := os.Stat(work()); !os.IsNotExist(err) {
		t.Fatalf("VM directory left after a failed restore: %v", err)
	}
	after, _ := os.ReadFile(state)
	memAfter, _ := os.ReadFile(s.spec.MemPath)
	if !bytes.Equal(before, after) || !bytes.Equal(memBefore, memAfter) {
		t.Fatal("a failed restore changed the snapshot")
	}
}

func fileExistsT(p string) bool { _, err := os.Stat(p); return err == nil }

func checkPages(t *testing.T, path string, pages int, want func(int) byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != pages*4096 {
		t.Fatalf("%s: %d bytes, want %d", path, len(b), pages*4096)
	}
	for i := 0; i < pages; i++ {
		if !bytes.Equal(b[i*4096:(i+1)*4096], bytes.Repeat([]byte{want(i)}, 4096)) {
			t.Fatalf("%s: page %d holds %#x, want %#x", path, i, b[i*4096], want(i))
		}
	}
}

// TestFirecrackerJailer: the exact jailer command line, the chroot tree
// it is given (hard links on the same file system, bind mounts across,
// read-write files owned by the VM's uid), Firecracker running as that
// uid inside it, snapshots through it, and nothing left on Stop or when
// the jailer fails.
func TestFirecrackerJailer(t *testing.T) {
	testutil.RequireRoot(t)
	boot := fcsim.Writes{Seed: 7, Stride: 4, Offset: 1}
	resume := fcsim.Writes{Seed: 13, Stride: 9, Offset: 4}
	t.Setenv(fcsim.EnvWriteOnStart, fmt.Sprintf("%d,%d,%d", boot.Seed, boot.Stride, boot.Offset))
	t.Setenv(fcsim.EnvWriteOnResume, fmt.Sprintf("%d,%d,%d", resume.Seed, resume.Stride, resume.Offset))
	buildFCSim(t)
	base, err := os.MkdirTemp("", "wj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	record := filepath.Join(base, "jailer-calls.json")
	t.Setenv(fcsim.EnvJailerRecord, record)
	jc := &vm.JailerConfig{Path: jailerBin, ChrootBase: filepath.Join(base, "srv"), UIDBase: 61000, GIDBase: 62000, Slots: 16, ParentCgroup: "wrenn-fc"}
	f := newFC(t, jc)
	s := newFCSetup(t, 16)
	s.spec.Netns = "/proc/self/ns/net" // a network namespace handle the fake jailer joins
	id := filepath.Base(s.spec.Dir)
	root := filepath.Join(jc.ChrootBase, "firecracker", id, "root")
	ctx := testutil.Context(t, testutil.Short)

	m, err := f.Launch(ctx, s.spec)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	stopOnCleanup(t, m)
	calls := readCalls(t, record)
	if len(calls) != 1 {
		t.Fatalf("%d jailer calls", len(calls))
	}
	j := calls[0]
	want := fcsim.JailerArgs{
		ID: id, ExecFile: fcsimBin, UID: 61000, GID: 62000, ChrootBase: jc.ChrootBase, Netns: s.spec.Netns,
		CgroupVersion: "2", ParentCgroup: "wrenn-fc",
		Cgroups: []string{"memory.max=" + fmt.Sprint((2*16+128)<<20), "cpu.max=200000 100000"},
		Limits:  []string{"no-file=4096"},
		Extra:   []string{"--api-sock", "api.sock", "--level", "Warning"},
	}
	tree := j.Tree
	j.Tree = nil
	if gotJ, wantJ := fmt.Sprintf("%+v", j), fmt.Sprintf("%+v", want); gotJ != wantJ {
		t.Fatalf("jailer arguments\n got %s\nwant %s", gotJ, wantJ)
	}
	t.Logf("jailer tree: %v", tree)
	for name, w := range map[string]string{
		"vmlinux": "uid=0", "initrd": "uid=0", "vda": "uid=0", "vdb": "uid=61000", "vdc": "uid=0", "mem": "uid=61000",
	} {
		if got := tree[name]; !strings.HasSuffix(got, w) || strings.HasPrefix(got, "d") {
			t.Errorf("chroot entry %s: %q, want a file with %s", name, got, w)
		}
	}
	if len(tree) != 6 {
		t.Errorf("chroot holds %d entries, want 6: %v", len(tree), tree)
	}
	// The kernel (same file system) is a hard link; the RAM file (tmpfs)
	// a bind mount.
	if st1, st2 := statIno(t, filepath.Join(root, "vmlinux")), statIno(t, filepath.Join(filepath.Dir(s.spec.Kernel), "vmlinux")); st1 != st2 {
		t.Error("vmlinux is not a hard link of the kernel")
	}
	if !slices.Contains(mountPoints(t), filepath.Join(root, "mem")) {
		t.Error("the RAM file is not bind-mounted into the chroot")
	}
	if uid := procUID(t, m.PID()); uid != "61000" {
		t.Errorf("firecracker runs as uid %s, want 61000", uid)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	checkJailGone(t, jc, id)

	// Snapshots through the jail (chroot paths, jailed uid).
	snapshotRoundTrip(t, f, s, boot, resume, func() string { return filepath.Join(jc.ChrootBase, "firecracker", id) })
	checkJailGone(t, jc, id)
	t.Setenv(fcsim.EnvVersion, "")

	// A jailer that fails: a clear error, nothing left.
	t.Setenv(fcsim.EnvJailerFail, "cannot create cgroup wrenn-fc: permission denied")
	if m, err := f.Launch(ctx, s.spec); err == nil || !strings.Contains(err.Error(), "cannot create cgroup") {
		if m != nil {
			stopOnCleanup(t, m)
		}
		t.Fatalf("Launch with a failing jailer: %v", err)
	} else {
		t.Logf("refused as expected: %v", err)
	}
	checkJailGone(t, jc, id)
	if !fileExistsT(s.spec.MemPath) || !fileExistsT(s.spec.Disks[1].Path) {
		t.Fatal("the capsule's files went with the jail")
	}
}

func readCalls(t *testing.T, path string) []fcsim.JailerArgs {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []fcsim.JailerArgs
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var j fcsim.JailerArgs
		if err := json.Unmarshal(sc.Bytes(), &j); err != nil {
			t.Fatal(err)
		}
		out = append(out, j)
	}
	return out
}

func statIno(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func mountPoints(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if fs := strings.Fields(l); len(fs) > 4 {
			out = append(out, fs[4])
		}
	}
	return out
}

func procUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	return ""
}

func checkJailGone(t *testing.T, jc *vm.JailerConfig, id string) {
	t.Helper()
	dir := filepath.Join(jc.ChrootBase, "firecracker", id)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("jail %s left: %v", dir, err)
	}
	for _, mp := range mountPoints(t) {
		if strings.HasPrefix(mp, jc.ChrootBase) {
			t.Fatalf("mount %s left", mp)
		}
	}
}

// TestFirecrackerDriver: the microVM driver on the Firecracker backend
// (simulator): create, and a start that boots (every boot step accepted,
// in the capsule's network namespace) but, with no guest, never sees envd:
// the start fails at wait-ready and is undone (no process, no VM
// directory, no RAM file); destroy leaves nothing. The driver's
// conformance suite needs a guest: TestFirecrackerReal.
func TestFirecrackerDriver(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	f := newFC(t, nil)
	cfg := testConfig(t, t.TempDir())
	cfg.Network.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 60+int(seq.Add(1))%10))
	cfg.VMM = f
	kvm := true
	cfg.KVM = &kvm
	cfg.BootTimeout = 2 * time.Second
	d := openDriver(t, cfg)
	if d.Backend() != "firecracker" {
		t.Fatalf("VMMName %q", d.Backend())
	}
	ctx := testutil.Context(t, testutil.Long)
	spec := runtime.Spec{ID: "cl-fcdriver", Template: tmplName, MemoryMB: 128}
	info, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	_, err = d.Start(ctx, spec.ID)
	if err == nil {
		t.Fatal("Start succeeded without a guest")
	}
	t.Logf("start without a guest fails as expected: %v", err)
	if !strings.Contains(err.Error(), "wait-ready") {
		t.Fatalf("Start failed before wait-ready (a boot step was refused?): %v", err)
	}
	runDirs, _ := os.ReadDir(f.RunDir)
	if len(runDirs) != 0 {
		t.Fatalf("VM directories left after the failed start: %v", runDirs)
	}
	if procs := fcProcs(t, f.Bin); len(procs) != 0 {
		t.Fatalf("firecracker processes left: %v", procs)
	}
	if ents, _ := os.ReadDir(cfg.MemDir); len(ents) != 0 {
		t.Fatalf("RAM files left: %v", ents)
	}
	if err := d.Destroy(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
}

func fcProcs(t *testing.T, bin string) []string {
	t.Helper()
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.HasPrefix(b, []byte(bin+"\x00")) && !bytes.Contains(b, []byte("--version")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestFirecrackerReal runs the runtime conformance suite on a real
// Firecracker: it needs a working KVM and WRENN_FIRECRACKER naming the
// binary (WRENN_FIRECRACKER_JAILER, optional, the jailer).
func TestFirecrackerReal(t *testing.T) {
	bin := os.Getenv("WRENN_FIRECRACKER")
	if bin == "" {
		t.Skip("not run: WRENN_FIRECRACKER does not name a Firecracker binary (and this host's KVM must work); the backend is checked against the simulator only (docs/FIRECRACKER.md)")
	}
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	fc, why, err := vm.ChooseFirecracker(testutil.Context(t, testutil.Long), vm.FirecrackerOptions{
		Bin: bin, JailerBin: os.Getenv("WRENN_FIRECRACKER_JAILER"), KernelDir: kernelDir,
	}, fcLogger())
	if err != nil {
		t.Fatal(err)
	}
	if fc == nil {
		if strings.Contains(why, "KVM") {
			t.Skip("not run: " + why)
		}
		t.Fatal(why)
	}
	runtimetest.Run(t,
		func(t *testing.T) runtime.Driver {
			cfg := testConfig(t, t.TempDir())
			cfg.Network.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 60+int(seq.Add(1))%10))
			cfg.VMM = fc
			kvm := true
			cfg.KVM = &kvm
			return openDriver(t, cfg)
		},
		runtimetest.WithTemplate(tmplName),
		runtimetest.WithExec(runtimetest.EnvdExecFunc),
	)
}

// TestChooseFirecracker: `wrenn agent --firecracker-bin` with a broken
// binary is an error; without what Firecracker needs on the host (here: a
// vmlinux) it falls back to QEMU, saying why.
func TestChooseFirecracker(t *testing.T) {
	buildFCSim(t)
	ctx := testutil.Context(t, testutil.Short)
	t.Run("wrong version", func(t *testing.T) {
		t.Setenv(fcsim.EnvVersion, "1.4.0")
		fc, _, err := vm.ChooseFirecracker(ctx, vm.FirecrackerOptions{Bin: fcsimBin, KernelDir: t.TempDir()}, fcLogger())
		if fc != nil || err == nil || !strings.Contains(err.Error(), "v1.4.0") {
			t.Fatalf("got %v, %v", fc, err)
		}
	})
	t.Run("missing jailer", func(t *testing.T) {
		fc, _, err := vm.ChooseFirecracker(ctx, vm.FirecrackerOptions{Bin: fcsimBin, JailerBin: "/nonexistent/jailer", KernelDir: t.TempDir()}, fcLogger())
		if fc != nil || err == nil || !strings.Contains(err.Error(), "jailer") {
			t.Fatalf("got %v, %v", fc, err)
		}
	})
	t.Run("no vmlinux", func(t *testing.T) {
		fc, why, err := vm.ChooseFirecracker(ctx, vm.FirecrackerOptions{Bin: fcsimBin, KernelDir: t.TempDir()}, fcLogger())
		if fc != nil || err != nil || !strings.Contains(why, "no vmlinux") {
			t.Fatalf("got %v, %q, %v", fc, why, err)
		}
		t.Logf("falls back to QEMU: %s", why)
	})
}

// TestFirecrackerAttach: a new agent re-attaches to a running VM by its
// process (the command line must name the VM's id); a VM restored lazily
// whose page server died before prefetch finished is refused and ended.
func TestFirecrackerAttach(t *testing.T) {
	f := newFC(t, nil)
	s := newFCSetup(t, 16)
	ctx := testutil.Context(t, testutil.Short)
	m, err := f.Launch(ctx, s.spec)
	if err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, m)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Attach(ctx, s.spec, os.Getpid()); err == nil {
		t.Fatal("attached to a process that is not the VM")
	}
	m2, err := f.Attach(ctx, s.spec, m.PID())
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if ok, err := m2.Running(ctx); !ok || err != nil {
		t.Fatalf("Running after Attach: %v %v", ok, err)
	}
	// As if restored lazily and the old agent (its page server) died.
	work := filepath.Join(f.RunDir, filepath.Base(s.spec.Dir))
	if err := os.WriteFile(filepath.Join(work, "uffd-pending"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Attach(ctx, s.spec, m.PID()); err == nil || !strings.Contains(err.Error(), "page server") {
		t.Fatalf("Attach of a VM whose page server died: %v", err)
	}
	select {
	case <-m.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the refused VM still runs")
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Fatalf("VM directory left: %v", err)
	}
}
