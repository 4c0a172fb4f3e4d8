package hostagent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// volumeDirs are dirs on 10.2.<32*half>.0/19 (the volumes tests use 10.2/16) whose
// driver publishes to the shared snapshot store at shared.
func volumeDirs(t *testing.T, half int, shared string) dirs {
	d := newDirs(t)
	d.subnet = netip.MustParsePrefix(fmt.Sprintf("10.2.%d.0/19", 32*half))
	d.tweakDriver = func(c *container.Config) {
		st, err := snapstore.OpenLocal(shared)
		if err != nil {
			t.Fatal(err)
		}
		c.Snapshots = &snapshot.Manager{Store: st, TempDir: t.TempDir()}
	}
	// After the host's own cleanup (which destroys capsules through the
	// driver only): a failed test leaves no volume mounted.
	t.Cleanup(func() {
		ms, _ := rootfs.MountsUnder(filepath.Join(d.agentState, "volumes"))
		for i := len(ms) - 1; i >= 0; i-- {
			_ = syscall.Unmount(ms[i], syscall.MNT_DETACH)
		}
	})
	return d
}

func execOut(t *testing.T, c hostagentv1connect.HostAgentServiceClient, id, script string) (string, int32) {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	res, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", script}}))
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	return string(res.Msg.GetStdout()) + string(res.Msg.GetStderr()), res.Msg.GetExitCode()
}

// TestVolumes: a volume written in a capsule on host A outlives it, is
// written back to the shared snapshot store and mounted read-only on host
// B with its content; the quota holds (ENOSPC inside, ResourceExhausted
// through the file RPCs); file access works without a capsule; nothing
// (mounts, loop devices, local copies) is left behind.
func TestVolumes(t *testing.T) {
	shared := t.TempDir()
	da, db := volumeDirs(t, 0, shared), volumeDirs(t, 1, shared)
	a := startHost(t, da, nil)
	b := startHost(t, db, nil)
	ctx := testutil.Context(t, testutil.Long)
	vid := fmt.Sprintf("vol-t%d%d", os.Getpid(), time.Now().UnixNano()%1e6)
	vol := &pb.Volume{VolumeId: vid, SizeMb: 32, SnapshotName: "volume-" + vid}

	c1 := create(t, a.client, &pb.CreateCapsuleRequest{TimeoutSec: 600, VolumeMounts: []*pb.VolumeMount{{Volume: vol, Path: "/data"}}})
	id1 := c1.GetCapsuleId()
	if out, code := execOut(t, a.client, id1, "echo hello from A > /data/hello && mkdir -p /data/sub && echo x > /data/sub/f && ls -ld /data && id -u"); code != 0 {
		t.Fatalf("write in capsule: %d %s", code, out)
	}
	// The quota: a 32 MB volume takes no 40 MB file.
	out, code := execOut(t, a.client, id1, "dd if=/dev/zero of=/data/big bs=1M count=40 2>&1; echo rc=$?; rm -f /data/big")
	if !strings.Contains(out, "No space left on device") || strings.Contains(out, "rc=0") {
		t.Fatalf("dd past the quota: code %d, %s", code, out)
	}
	// Pause to disk and resume: the volume stays held (and mounted) on
	// this host across it, content and binds intact.
	if _, err := a.client.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id1, ToDisk: true})); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id1})); err != nil {
		t.Fatal(err)
	}
	if out, code := execOut(t, a.client, id1, "cat /data/hello && echo again >> /data/hello"); code != 0 || out != "hello from A\n" {
		t.Fatalf("after pause to disk and resume: %d %q", code, out)
	}
	if _, err := a.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id1})); err != nil {
		t.Fatal(err)
	}
	// Written back and let go on A: no local copy, no mount, no loop.
	volDir := filepath.Join(da.agentState, "volumes", vol.GetVolumeId())
	if _, err := os.Stat(volDir); !os.IsNotExist(err) {
		t.Fatalf("local copy left on A: %v", err)
	}
	if loops, _ := rootfs.LoopDevicesFor(filepath.Join(volDir, "disk.img")); len(loops) > 0 {
		t.Fatalf("loop devices left: %v", loops)
	}

	// On host B, read-only: the content is there, writes are refused.
	c2 := create(t, b.client, &pb.CreateCapsuleRequest{TimeoutSec: 600, VolumeMounts: []*pb.VolumeMount{{Volume: vol, Path: "/mnt/v", ReadOnly: true}}})
	id2 := c2.GetCapsuleId()
	if got := execOK(t, b.client, id2, "/bin/cat", "/mnt/v/hello"); got != "hello from A\nagain\n" {
		t.Fatalf("read on B: %q", got)
	}
	if out, code := execOut(t, b.client, id2, "echo no > /mnt/v/x"); code == 0 || !strings.Contains(out, "Read-only") {
		t.Fatalf("write to a read-only mount: code %d %s", code, out)
	}
	// File RPCs on the host that holds it (read-only holders: reads).
	lres, err := b.client.VolumeListDir(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: vol, Path: "/"}))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range lres.Msg.GetEntries() {
		names = append(names, e.GetName()+":"+e.GetType())
	}
	if got := strings.Join(names, ","); got != "hello:file,sub:dir" {
		t.Fatalf("list: %s", got)
	}
	if _, err := b.client.DeleteVolume(ctx, connect.NewRequest(&pb.DeleteVolumeRequest{Volume: vol})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("delete while held: %v", err)
	}
	if _, err := b.client.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id2})); err != nil {
		t.Fatal(err)
	}

	// Without a capsule, on A: write, read, list, remove; quota.
	if _, err := a.client.VolumeWriteFile(ctx, connect.NewRequest(&pb.VolumeWriteFileRequest{Volume: vol, Path: "/up/load.txt", Data: []byte("via api")})); err != nil {
		t.Fatal(err)
	}
	rres, err := b.client.VolumeReadFile(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: vol, Path: "/up/load.txt"}))
	if err != nil || string(rres.Msg.GetData()) != "via api" {
		t.Fatalf("read back on B: %v %q", err, rres.Msg.GetData())
	}
	big := make([]byte, 40<<20)
	for i := range big {
		big[i] = byte(i)
	}
	if _, err := a.client.VolumeWriteFile(ctx, connect.NewRequest(&pb.VolumeWriteFileRequest{Volume: vol, Path: "/big", Data: big})); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("write past the quota: %v", err)
	}
	if _, err := a.client.VolumeReadFile(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: vol, Path: "/big"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("a failed write left a file: %v", err)
	}
	for _, bad := range []string{"/../etc/passwd", "a/../../b"} {
		if _, err := a.client.VolumeReadFile(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: vol, Path: bad})); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("path %q: %v", bad, err)
		}
	}
	if _, err := a.client.VolumeRemove(ctx, connect.NewRequest(&pb.VolumeFileRequest{Volume: vol, Path: "/sub"})); err != nil {
		t.Fatal(err)
	}
	// A mount over / is refused by the driver too.
	_, err = a.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{CapsuleId: newID(), VolumeMounts: []*pb.VolumeMount{{Volume: vol, Path: "/"}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("mount over /: %v", err)
	}
	for _, h := range []dirs{da, db} {
		es, _ := os.ReadDir(filepath.Join(h.agentState, "volumes"))
		if len(es) > 0 {
			t.Fatalf("volumes left on a host: %v", es)
		}
	}
	if _, err := a.client.DeleteVolume(ctx, connect.NewRequest(&pb.DeleteVolumeRequest{Volume: vol})); err != nil {
		t.Fatal(err)
	}
	st, err := snapstore.OpenLocal(shared)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetHeader(ctx, vol.GetSnapshotName()); err == nil {
		t.Fatal("header left after delete")
	}
}

// TestVolumeAcrossMemoryPause: with a working CRIU, a capsule with a
// volume pauses to disk with its files only (memory_kept false: a CRIU
// restore of processes using the volume binds does not bring them back,
// so the driver does not try) and resumes with the volume's content.
func TestVolumeAcrossMemoryPause(t *testing.T) {
	criu := os.Getenv("WRENN_TEST_CRIU")
	if criu == "" {
		t.Skip("memory snapshots: set WRENN_TEST_CRIU to a working criu (WRENN_TEST_CRIU=$(scripts/criu.sh)); make test does")
	}
	d := volumeDirs(t, 6, t.TempDir()) // 10.2.192.0/19: the control-plane volume tests use 64–127
	tweak := d.tweakDriver
	d.tweakDriver = func(dc *container.Config) {
		tweak(dc)
		dc.CRIUPath = criu
		dc.CRIUEnv = strings.Fields(os.Getenv("WRENN_TEST_CRIU_ENV"))
	}
	h := startHost(t, d, nil)
	c := h.client
	ctx := testutil.Context(t, testutil.Long)
	vid := fmt.Sprintf("vol-m%d%d", os.Getpid(), time.Now().UnixNano()%1e6)
	vol := &pb.Volume{VolumeId: vid, SizeMb: 32, SnapshotName: "volume-" + vid}
	id := create(t, c, &pb.CreateCapsuleRequest{TimeoutSec: 600, VolumeMounts: []*pb.VolumeMount{{Volume: vol, Path: "/data"}}}).GetCapsuleId()
	execOK(t, c, id, "/bin/sh", "-c", "echo before > /data/f")
	pr, err := c.PauseCapsule(ctx, connect.NewRequest(&pb.PauseCapsuleRequest{CapsuleId: id, ToDisk: true}))
	if err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	if pr.Msg.GetMemoryKept() {
		t.Fatal("a capsule with a volume kept its memory across a pause to disk")
	}
	if _, err := c.ResumeCapsule(ctx, connect.NewRequest(&pb.ResumeCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := execOK(t, c, id, "/bin/sh", "-c", "echo after >> /data/f; cat /data/f"); got != "before\nafter\n" {
		t.Fatalf("volume after resume: %q", got)
	}
	if _, err := c.DestroyCapsule(ctx, connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id})); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkVolumeThroughput measures, inside one capsule in the same run,
// sequential write (dd conv=fsync: to the device) and read-back throughput
// of a 64 MiB file on a mounted volume (loop + ext4 through an idmapped
// bind) and on the capsule's own disk (/tmp: overlayfs over its loop +
// ext4 writable layer), and prints both and their ratios. The capsule
// cannot drop the host's page cache, so the read right after the write is
// served mostly from it on both sides alike.
func BenchmarkVolumeThroughput(b *testing.B) {
	d := newDirs(b)
	d.subnet = netip.MustParsePrefix("10.2.160.0/19")
	shared := b.TempDir()
	d.tweakDriver = func(c *container.Config) {
		st, err := snapstore.OpenLocal(shared)
		if err != nil {
			b.Fatal(err)
		}
		c.Snapshots = &snapshot.Manager{Store: st, TempDir: b.TempDir()}
		c.DefaultDiskSizeMB = 512
	}
	h := startHost(b, d, nil)
	ctx := testutil.Context(b, testutil.Long)
	vid := fmt.Sprintf("vol-b%d", os.Getpid())
	vol := &pb.Volume{VolumeId: vid, SizeMb: 512, SnapshotName: "volume-" + vid}
	res, err := h.client.CreateCapsule(ctx, connect.NewRequest(&pb.CreateCapsuleRequest{
		CapsuleId: newID(), TimeoutSec: 3600, MemoryMb: 512, DiskSizeMb: 512,
		VolumeMounts: []*pb.VolumeMount{{Volume: vol, Path: "/vol"}},
	}))
	if err != nil {
		b.Fatal(err)
	}
	id := res.Msg.GetCapsule().GetCapsuleId()
	b.Cleanup(func() {
		_, _ = h.client.DestroyCapsule(context.Background(), connect.NewRequest(&pb.DestroyCapsuleRequest{CapsuleId: id}))
	})
	// One pass in dir: write 64 MiB with fsync, then read it back; each
	// a timed exec, less the time of an empty exec (measured alike).
	sh := func(script string) time.Duration {
		t0 := time.Now()
		out, err := h.client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{CapsuleId: id, Cmd: "/bin/sh", Args: []string{"-c", script}}))
		if err != nil || out.Msg.GetExitCode() != 0 {
			b.Fatalf("%s: %v %s", script, err, out.Msg.GetStderr())
		}
		return time.Since(t0)
	}
	var empty time.Duration
	for range 5 {
		empty += sh("true")
	}
	empty /= 5
	run := func(dir string) (write, read time.Duration) {
		sh(fmt.Sprintf("rm -f %s/bench; sync", dir))
		write = sh(fmt.Sprintf("dd if=/dev/zero of=%s/bench bs=1M count=64 conv=fsync 2>/dev/null", dir)) - empty
		read = sh(fmt.Sprintf("dd if=%s/bench of=/dev/null bs=1M 2>/dev/null", dir)) - empty
		sh(fmt.Sprintf("rm -f %s/bench", dir))
		return write, read
	}
	var vw, vr, dw, dr time.Duration
	b.ResetTimer()
	for b.Loop() {
		w, r := run("/vol")
		vw, vr = vw+w, vr+r
		w, r = run("/tmp")
		dw, dr = dw+w, dr+r
	}
	b.StopTimer()
	mbps := func(total time.Duration) float64 { return 64 * float64(b.N) / total.Seconds() }
	b.ReportMetric(mbps(vw), "volume_write_MBps")
	b.ReportMetric(mbps(dw), "disk_write_MBps")
	b.ReportMetric(mbps(vw)/mbps(dw), "write_ratio")
	b.ReportMetric(mbps(vr), "volume_read_MBps")
	b.ReportMetric(mbps(dr), "disk_read_MBps")
	b.ReportMetric(mbps(vr)/mbps(dr), "read_ratio")
}
