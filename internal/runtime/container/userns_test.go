package container_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	"golang.org/x/sys/unix"
)

// hostUID returns the real uid (on the host) of a process.
func hostUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid, _ := strconv.Atoi(strings.Fields(rest)[0])
			return uid
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return -1
}

// Capsule root is an unprivileged host uid, distinct per capsule; files
// written through envd keep sensible owners inside and are stored on the
// disk image with the capsule's own ids.
func TestUserNamespace(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	a := startCapsule(t, d, runtime.Spec{ID: "cl-userns-a"})
	b := startCapsule(t, d, runtime.Spec{ID: "cl-userns-b"})
	ua, ub := hostUID(t, a.PID), hostUID(t, b.PID)
	if ua == 0 || ub == 0 || ua == ub {
		t.Fatalf("envd runs as host uids %d and %d, want distinct non-zero ids", ua, ub)
	}
	if ua < 1<<20 || ub < 1<<20 {
		t.Errorf("host uids %d, %d are in the range of ordinary users", ua, ub)
	}
	out, err := runcExec(ctx, d, "cl-userns-a", "sh", "-c", "id -u; cat /proc/self/uid_map")
	if err != nil {
		t.Fatalf("exec: %v: %s", err, out)
	}
	f := strings.Fields(out)
	if len(f) != 4 || f[0] != "0" || f[1] != "0" || f[2] != strconv.Itoa(ua) || f[3] != "65536" {
		t.Errorf("inside: id and uid_map = %q, want 0 / 0 %d 65536", out, ua)
	}
	// Files written through the API as root and as user.
	c, err := envdclient.New(envdclient.Config{Addr: a.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upload(ctx, "/root/by-root", "root", bytes.NewReader([]byte("r"))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upload(ctx, "/home/user/by-user", "user", bytes.NewReader([]byte("u"))); err != nil {
		t.Fatal(err)
	}
	out, err = runcExec(ctx, d, "cl-userns-a", "sh", "-c", "stat -c '%u:%g' /root/by-root /home/user/by-user /etc/hosts /bin/sh")
	if err != nil {
		t.Fatalf("stat: %v: %s", err, out)
	}
	if got, want := strings.Fields(out), []string{"0:0", "1000:1000", "0:0", "0:0"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("owners inside = %v, want %v", got, want)
	}
	// On the disk image the ids are the capsule's own (portable to another
	// mapping); from the host through the overlay they are the mapped ids.
	key, _ := d.Key("cl-userns-a")
	dir := filepath.Join(filepath.Dir(d.RuncRoot()), "capsules", key)
	for _, tc := range []struct {
		path string
		uid  int
	}{
		{filepath.Join(dir, "disk", "upper", "root", "by-root"), 0},
		{filepath.Join(dir, "disk", "upper", "home", "user", "by-user"), 1000},
		{filepath.Join(dir, "rootfs", "root", "by-root"), ua},
		{filepath.Join(dir, "rootfs", "home", "user", "by-user"), ua + 1000},
	} {
		st, err := os.Stat(tc.path)
		if err != nil {
			t.Errorf("stat %s: %v", tc.path, err)
			continue
		}
		if uid := int(st.Sys().(*syscall.Stat_t).Uid); uid != tc.uid {
			t.Errorf("%s owned by host uid %d, want %d", tc.path, uid, tc.uid)
		}
	}
	// The mapping survives a pause (freezer) and a stop/start.
	if err := d.Pause(ctx, "cl-userns-a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, "cl-userns-a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, "cl-userns-a", testutil.Short); err != nil {
		t.Fatal(err)
	}
	info, err := d.Start(ctx, "cl-userns-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(ctx, info); err != nil {
		t.Fatal(err)
	}
	if got := hostUID(t, info.PID); got != ua {
		t.Errorf("after stop/start envd runs as host uid %d, want %d", got, ua)
	}
	// A server on a port below 1024 still works for capsule root.
	if out, err := runcExec(ctx, d, "cl-userns-a", "sh", "-c", "nc -l -p 80 & p=$!; sleep 0.2; kill $p"); err != nil {
		t.Errorf("listen on port 80: %v: %s", err, out)
	}
}

// The capsule's network namespace is owned by its user namespace (made by
// the driver with it, issue 11): CRIU only dumps a task whose namespaces
// belong to its user namespace, and capsule root mounts a sysfs of its
// own network instead of seeing the host's /sys.
func TestUserNSOwnsNetns(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	info := startCapsule(t, d, runtime.Spec{ID: "cl-userns-net"})
	netns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", info.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	owner, err := unix.IoctlRetInt(int(netns.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		t.Fatalf("NS_GET_USERNS: %v", err)
	}
	defer unix.Close(owner)
	var ownerSt, userSt unix.Stat_t
	if err := unix.Fstat(owner, &ownerSt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/user", info.PID), &userSt); err != nil {
		t.Fatal(err)
	}
	if ownerSt.Ino != userSt.Ino {
		t.Errorf("netns owned by user namespace %d, capsule's is %d", ownerSt.Ino, userSt.Ino)
	}
	out, err := runcExec(ctx, d, "cl-userns-net", "sh", "-c", "awk '$2 == \"/sys\" {print $3}' /proc/mounts; ls /sys/class/net")
	if err != nil {
		t.Fatalf("exec: %v: %s", err, out)
	}
	if f := strings.Fields(out); len(f) == 0 || f[0] != "sysfs" || !strings.Contains(out, "eth0") || strings.Contains(out, "wrenn") {
		t.Errorf("/sys inside: %q, want the capsule's own sysfs (eth0, lo; no host veths)", out)
	}
	if err := d.Destroy(ctx, "cl-userns-net"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, d)
}
