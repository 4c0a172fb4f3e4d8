package container_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/runtime/container"
	"github.com/wrenn-dev/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// installProbe copies the static sysprobe helper into a capsule as
// /usr/local/bin/sysprobe.
func installProbe(t testing.TB, d *container.Driver, id string) {
	t.Helper()
	// Through envd, as capsule root: host root cannot create files on a
	// user-namespaced capsule's idmapped rootfs (EOVERFLOW: it has no id
	// there).
	ctx := testutil.Context(t, testutil.Long)
	b, err := os.ReadFile(probeBin)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := envdclient.New(envdclient.Config{Addr: info.EnvdAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Upload(ctx, "/usr/local/bin/sysprobe", "root", bytes.NewReader(b)); err != nil {
		t.Fatalf("upload sysprobe: %v", err)
	}
	if out, err := runtimetest.EnvdExec(ctx, info, "root", "chmod", "755", "/usr/local/bin/sysprobe"); err != nil {
		t.Fatalf("chmod sysprobe: %v: %s", err, out)
	}
}

// mustExec runs a command in a capsule and fails the test if it fails.
func mustExec(ctx context.Context, t *testing.T, d *container.Driver, id string, args ...string) string {
	t.Helper()
	out, err := runcExec(ctx, d, id, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// TestSeccompDenySuite: the dangerous calls fail inside a capsule with
// EPERM (clone3 with ENOSYS, so libc falls back to clone, whose flags the
// filter checks), whatever the capabilities would have said.
func TestSeccompDenySuite(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-deny"})
	installProbe(t, d, "cl-deny")
	out := mustExec(ctx, t, d, "cl-deny", "sysprobe", "deny")
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, errno, _ := strings.Cut(line, " ")
		got[name] = errno
	}
	want := []string{
		"mount", "umount2", "pivot_root", "init_module", "finit_module", "delete_module",
		"kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
		"request_key", "unshare-user", "unshare-mount", "unshare-net", "setns",
		"clone-newuser", "clone3", "open_by_handle_at", "name_to_handle_at", "userfaultfd",
		"reboot", "swapon", "acct", "io_uring_setup", "fsopen", "open_tree", "kcmp",
		"pidfd_getfd", "syslog", "settimeofday", "personality-exec", "modify_ldt",
	}
	for _, name := range want {
		errno, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: not probed (output %q)", name, out)
		case name == "clone3" && errno != "ENOSYS":
			t.Errorf("clone3 = %s, want ENOSYS", errno)
		case name != "clone3" && errno != "EPERM":
			t.Errorf("%s = %s, want EPERM from the seccomp filter", name, errno)
		}
	}
}

// TestWorkloadsMinimal runs real programs in a busybox capsule under the
// allow-list: a shell with pipes and job control, busybox tools, TCP over
// loopback with nc, a many-threaded Go program, and ptrace of one's own
// child (what strace -f and gdb do).
func TestWorkloadsMinimal(t *testing.T) {
	d := newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-work"})
	installProbe(t, d, "cl-work")
	cases := []struct {
		name, script, want string
	}{
		{"pipes", "seq 1 1000 | grep 7 | sort -rn | head -n 1 | tr 9 x", "xx7"},
		{"subshells", "a=$( (echo in; echo sub) | wc -l ); echo $((a * 21))", "42"},
		{"background jobs", "sleep 0.1 & p=$!; wait $p; echo $?", "0"},
		{"files", "cd /tmp && mkdir -p a/b && echo hi > a/b/f && ln -s b/f a/l && mv a c && cat c/l && chmod 600 c/b/f && stat -c %a c/b/f && rm -r c", "hi\n600"},
		{"archive", "cd /tmp && mkdir -p t && echo data > t/x && tar czf t.tgz t && rm -r t && tar xzf t.tgz && cat t/x && rm -r t t.tgz", "data"},
		{"tools", "echo 'b 2\na 1' | awk '{s+=$2} END {print s}'; echo hello | sed s/l/L/g; echo abc | md5sum | cut -c1-8; date +%Y >/dev/null && echo date", "3\nheLLo\n0bee89b0\ndate"},
		{"fifo", "cd /tmp && mkfifo p && (echo through > p &) && cat p && rm p", "through"},
		{"ps", "ps -o comm | grep -c envd", "1"},
		{"nc", "nc -l -p 7070 > /tmp/got & sleep 0.3; echo over-tcp | nc -w 2 127.0.0.1 7070; wait; cat /tmp/got", "over-tcp"},
		{"threads", "sysprobe threads", "threads ok 64"},
		{"ptrace child", "sysprobe ptrace", "ptrace ok"},
		{"no new privileges", "grep NoNewPrivs /proc/self/status | tr -d '\\t '", "NoNewPrivs:1"},
		{"seccomp on", "grep '^Seccomp:' /proc/self/status | tr -d '\\t '", "Seccomp:2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := mustExec(ctx, t, d, "cl-work", "sh", "-c", c.script)
			if strings.TrimSpace(out) != c.want {
				t.Errorf("%q printed %q, want %q", c.script, strings.TrimSpace(out), c.want)
			}
		})
	}
}

// TestSeccompDisabled: Config.DisableSeccomp (benchmarks) runs capsules
// without a filter.
func TestSeccompDisabled(t *testing.T) {
	testutil.RequireRoot(t)
	if setupErr != nil {
		t.Fatalf("test setup: %v", setupErr)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.DisableSeccomp = true
	d := openDriver(t, cfg)
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-noseccomp"})
	out := mustExec(ctx, t, d, "cl-noseccomp", "sh", "-c", "grep '^Seccomp:' /proc/self/status | tr -d '\\t '")
	if strings.TrimSpace(out) != "Seccomp:0" {
		t.Errorf("with DisableSeccomp: %q", out)
	}
}

// debianMirror and cacheDir are where the Debian templates come from: the
// same mirror and machine-wide cache `wrenn up` uses.
const (
	debianMirror = "http://deb.debian.org/debian"
	debianCache  = "/var/cache/wrenn"
)

// buildDebianTemplate builds (or reuses from the machine-wide cache) a
// Debian template; a failure is fatal with debootstrap's reason.
func buildDebianTemplate(t *testing.T, name string, extra ...string) {
	t.Helper()
	r := template.DefaultDebianRecipe(debianMirror)
	r.Packages = append(r.Packages, extra...)
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatalf("debootstrap is required for the Debian workload suite (scripts/deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if _, err := templates.BuildDebian(ctx, name, r, debianCache); err != nil {
		t.Fatalf("build the %s template (Debian's archive at %s must be reachable, or the recipe cached in %s): %v", name, debianMirror, debianCache, err)
	}
}

// pythonWorkload exercises the interpreter's threads, subprocesses,
// sockets, in-memory SQLite and a multiprocessing pool.
const pythonWorkload = `
import multiprocessing, os, socket, sqlite3, subprocess, threading
out = []
ts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(16)]
[t.start() for t in ts]
[t.join() for t in ts]
assert sorted(out) == [i * i for i in range(16)], out
assert subprocess.run(["sh", "-c", "echo sub"], capture_output=True, text=True).stdout == "sub\n"
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
cli.sendall(b"ping")
assert conn.recv(4) == b"ping"
db = sqlite3.connect(":memory:")
db.execute("create table t (x integer)")
db.executemany("insert into t values (?)", [(i,) for i in range(100)])
assert db.execute("select sum(x) from t").fetchone()[0] == 4950
def sq(x):
    return x * x
with multiprocessing.Pool(2) as pool:
    assert pool.map(sq, range(10)) == [x * x for x in range(10)]
print("python ok")
`

// TestWorkloadsDebianBase runs the shipped base template's programs under
// the allow-list: python3 (threads, subprocess, sockets, sqlite3,
// multiprocessing), git, curl to a local listener, procps' free.
func TestWorkloadsDebianBase(t *testing.T) {
	d := newDriver(t)
	buildDebianTemplate(t, "base")
	ctx := testutil.Context(t, testutil.Long)
	startCapsule(t, d, runtime.Spec{ID: "cl-deb", Template: "base", MemoryMB: 256, VCPUs: 1})
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"python3", []string{"python3", "-c", pythonWorkload}, "python ok"},
		{"git", []string{"sh", "-c", "cd /tmp && git init -q r && cd r && echo x > f && git add f && " +
			"git -c user.email=t@example.com -c user.name=t commit -qm one && echo y >> f && " +
			"git -c user.email=t@example.com -c user.name=t commit -qam two && git log --oneline | wc -l"}, "2"},
		{"curl", []string{"sh", "-c", "cd /tmp && echo served > h.txt && " +
			"(python3 -m http.server 8081 --bind 127.0.0.1 >/dev/null 2>&1 & echo $! > pid) && " +
			"for i in $(seq 100); do curl -sf http://127.0.0.1:8081/h.txt && break; sleep 0.1; done; kill $(cat pid)"}, "served"},
		{"bash", []string{"bash", "-c", "declare -A m=([a]=1 [b]=2); echo $(( ${m[a]} + ${m[b]} ))"}, "3"},
		{"free", []string{"sh", "-c", "free -m | awk '/^Mem:/ {print $2}'"}, "256"},
		{"cpu_count", []string{"python3", "-c", "import os; print(os.cpu_count(), len(os.sched_getaffinity(0)))"}, "1 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := mustExec(ctx, t, d, "cl-deb", c.args...)
			if strings.TrimSpace(out) != c.want {
				t.Errorf("%s printed %q, want %q", c.name, strings.TrimSpace(out), c.want)
			}
		})
	}
}
