package vm_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// bareBoot boots the guest kernel with an initramfs whose init powers
// off at once, on the same machine type, accelerator and kernel command
// line as the driver, and returns the time until QEMU exits.
func bareBoot(b *testing.B, dir string) time.Duration {
	b.Helper()
	bb := filepath.Join(dir, "bare")
	if err := os.MkdirAll(bb+"/bin", 0o755); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("cp", "/bin/busybox", bb+"/bin/busybox").CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	if err := os.WriteFile(bb+"/init", []byte("#!/bin/busybox sh\n/bin/busybox poweroff -f\n"), 0o755); err != nil {
		b.Fatal(err)
	}
	initrd := filepath.Join(dir, "bare.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc > "+initrd)
	cmd.Dir = bb
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("cpio: %v %s", err, out)
	}
	khz := 2600000
	if v := os.Getenv("WRENN_BENCH_TSC_KHZ"); v != "" {
		khz, _ = strconv.Atoi(v)
	}
	args := []string{
		"-machine", "microvm,acpi=on,rtc=on,x-option-roms=off,isa-serial=on", "-accel", "tcg", "-cpu", "qemu64",
		"-smp", "1", "-m", "128M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-chardev", "ringbuf,id=con,size=65536", "-serial", "chardev:con",
		"-kernel", filepath.Join(kernelDir, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd nokaslr random.trust_cpu=on tsc_early_khz=" + strconv.Itoa(khz) + " tsc=reliable",
	}
	t0 := time.Now()
	if out, err := exec.Command("qemu-system-x86_64", args...).CombinedOutput(); err != nil {
		b.Fatalf("bare boot: %v %s", err, out)
	}
	return time.Since(t0)
}

// BenchmarkBoot compares create -> envd answering with a bare boot of the
// same kernel to a trivial init, in the same run (TCG here; the figure
// on a KVM host is what this prints there).
func BenchmarkBoot(b *testing.B) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	d := openDriver(b, testConfig(b, b.TempDir()))
	const rounds = 5
	var bare, full []time.Duration
	for i := range rounds {
		bare = append(bare, bareBoot(b, b.TempDir()))
		id := fmt.Sprintf("cl-bench-%d", i)
		t0 := time.Now()
		startCapsule(b, d, runtime.Spec{ID: id})
		full = append(full, time.Since(t0))
		ctx := testutil.Context(b, time.Minute)
		_ = d.Destroy(ctx, id)
	}
	mb, mf := median(bare), median(full)
	b.ReportMetric(float64(mb.Milliseconds()), "bare-boot-ms")
	b.ReportMetric(float64(mf.Milliseconds()), "create-to-envd-ms")
	b.ReportMetric(float64(mf)/float64(mb), "ratio")
	b.Logf("kvm=%v: bare boot p50 %v %v, create->envd p50 %v %v, ratio %.2f", d.UsesKVM(), mb, bare, mf, full, float64(mf)/float64(mb))
}

// vmmOverhead is the VMM's resident memory beyond guest RAM (anonymous
// and file pages; the guest RAM file is shared memory, counted apart).
func vmmOverhead(b *testing.B, pid int) (overhead, guest int64) {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:", "RssFile:":
			overhead += v << 10
		case "RssShmem:":
			guest += v << 10
		}
	}
	return overhead, guest
}

// BenchmarkIdleOverhead measures an idle microVM's VMM memory beyond its
// guest's RAM.
func BenchmarkIdleOverhead(b *testing.B) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	d := openDriver(b, testConfig(b, b.TempDir()))
	info := startCapsule(b, d, runtime.Spec{ID: "cl-idle", MemoryMB: 256})
	time.Sleep(10 * time.Second)
	over, guest := vmmOverhead(b, info.PID)
	b.ReportMetric(float64(over)/mib, "vmm-rss-MiB")
	b.ReportMetric(float64(guest)/mib, "guest-ram-resident-MiB")
	b.Logf("idle 256 MiB microVM: VMM RSS beyond guest RAM %.1f MiB; guest RAM resident %.1f MiB", float64(over)/mib, float64(guest)/mib)
}

// BenchmarkResume measures pause to disk, restore and restore -> first
// exec for a 256 MiB and a 2 GiB guest (restore maps a sparse file of the
// stored blocks: the goal is a flat resume).
func BenchmarkResume(b *testing.B) {
	testutil.RequireRoot(b)
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	d := openDriver(b, testConfig(b, b.TempDir()))
	for _, memMB := range []int{256, 2048} {
		id := fmt.Sprintf("cl-res-%d", memMB)
		startCapsule(b, d, runtime.Spec{ID: id, MemoryMB: memMB})
		var restore, first, pause []time.Duration
		for range 3 {
			ctx := testutil.Context(b, 5*time.Minute)
			t0 := time.Now()
			snap, err := d.Snapshot(ctx, id)
			if err != nil {
				b.Fatalf("Snapshot: %v", err)
			}
			pause = append(pause, time.Since(t0))
			t0 = time.Now()
			if _, err := d.Restore(ctx, snap); err != nil {
				b.Fatalf("Restore: %v", err)
			}
			restore = append(restore, time.Since(t0))
			if out, err := exec1(ctx, d, id, "true"); err != nil {
				b.Fatalf("exec: %v %s", err, out)
			}
			first = append(first, time.Since(t0))
		}
		b.ReportMetric(float64(median(first).Milliseconds()), fmt.Sprintf("resume-first-exec-%dMiB-ms", memMB))
		b.Logf("%d MiB guest: pause to disk p50 %v, restore (to envd) p50 %v, restore -> first exec p50 %v", memMB, median(pause), median(restore), median(first))
	}
}
