package container_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/hostagent/portproxy"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// gvisorCompatPackages are what the gVisor compatibility template adds to
// the shipped base template (python3, git, curl…): pip, a C toolchain with
// make, and the sqlite3 shell. Built once from Debian's archive and cached
// machine-wide in /var/cache/wrenn like base. Node.js is not in it (nor in
// base): the heavy suite runs it under runc; docs/GVISOR.md says so.
var gvisorCompatPackages = []string{"python3-pip", "gcc", "libc6-dev", "make", "sqlite3"}

// TestGVisorWorkloads is the compatibility report of issue 18: real
// workloads in a gVisor capsule — pip building a wheel and installing it
// from a local index served inside the capsule (no network beyond the
// machine), a C build with gcc and make, git, SQLite (the shell and
// Python's module, on a file with WAL), and a background HTTP server
// reached from the host through the agent's port proxy.
func TestGVisorWorkloads(t *testing.T) {
	suiteTime(t)
	d := gvisorDriver(t)
	buildDebianTemplate(t, "gvcompat", gvisorCompatPackages...)
	ctx := testutil.Context(t, 10*time.Minute)
	const id = "cl-gcompat"
	startCapsule(t, d, runtime.Spec{ID: id, Template: "gvcompat", MemoryMB: 1024, VCPUs: 1})
	cases := []struct{ name, script, want string }{
		{"pip wheel and install from the file", `set -e
cd /tmp && mkdir -p proj/wrenncompat && cd proj
printf 'def hello():\n    return "compat ok"\n' > wrenncompat/__init__.py
printf '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n[project]\nname = "wrenncompat"\nversion = "1.0"\n' > pyproject.toml
pip wheel -q --no-index --no-build-isolation -w /tmp/wheels . 2>/dev/null
cd /tmp/wheels && ls *.whl | grep -c wrenncompat
pip install -q --root-user-action=ignore --break-system-packages --no-index --find-links /tmp/wheels wrenncompat
cd / && python3 -c 'import wrenncompat; print(wrenncompat.hello())'`, "1\ncompat ok"},
		{"pip from a local index", `set -e
cd /tmp/wheels && (setsid python3 -m http.server 8765 --bind 127.0.0.1 >/tmp/index.log 2>&1 < /dev/null & echo $! > /tmp/index.pid)
for i in $(seq 100); do curl -sf http://127.0.0.1:8765/ >/dev/null && break; sleep 0.1; done
pip install -q --root-user-action=ignore --break-system-packages --no-index --force-reinstall --find-links http://127.0.0.1:8765/ wrenncompat
kill $(cat /tmp/index.pid)
cd / && python3 -c 'import wrenncompat; print(wrenncompat.hello())'`, "compat ok"},
		{"gcc and make", "set -e; mkdir -p /tmp/build && cd /tmp/build && cat > m.c <<'EOF'\n" + gvisorCProgram + "EOF\n" +
			"printf 'm: m.c\\n\\tgcc -O2 -pthread -o m m.c\\n' > Makefile && make -s && ./m", "42"},
		{"git", "set -e; cd /tmp && git init -q r && cd r && echo x > f && git add f && " +
			"git -c user.email=t@example.com -c user.name=t commit -qm one && echo y >> f && " +
			"git -c user.email=t@example.com -c user.name=t commit -qam two && cd /tmp && git clone -q r r2 && git -C r2 log --oneline | wc -l", "2"},
		{"sqlite", `set -e; cd /tmp && sqlite3 db.sqlite 'pragma journal_mode=wal; create table t(x); insert into t values (1),(2),(3);' >/dev/null &&
python3 -c 'import sqlite3; c = sqlite3.connect("/tmp/db.sqlite"); c.execute("insert into t values (4)"); c.commit(); print(c.execute("select sum(x) from t").fetchone()[0])' &&
sqlite3 db.sqlite 'select count(*) from t;'`, "10\n4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := mustExec(ctx, t, d, id, "sh", "-c", c.script)
			if strings.TrimSpace(out) != c.want {
				t.Errorf("%s printed %q, want %q", c.name, strings.TrimSpace(out), c.want)
			}
		})
	}
	t.Run("HTTP server through the port proxy", func(t *testing.T) {
		mustExec(ctx, t, d, id, "sh", "-c", "mkdir -p /srv && echo served-by-gvisor > /srv/page.txt && "+
			"cd /srv && setsid nohup python3 -m http.server 8080 >/dev/null 2>&1 < /dev/null &")
		proxy := portproxy.New(portproxy.Config{Resolve: func(ctx context.Context, capsuleID string) (netip.Addr, error) {
			info, err := d.Inspect(ctx, capsuleID)
			if err != nil || info.State != runtime.StateRunning {
				return netip.Addr{}, portproxy.ErrNoCapsule
			}
			return info.IP, nil
		}})
		defer proxy.Close()
		srv := httptest.NewServer(proxy)
		defer srv.Close()
		var body string
		testutil.Eventually(t, 30*time.Second, func() bool {
			resp, err := http.Get(srv.URL + "/proxy/" + id + "/8080/page.txt")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
			return resp.StatusCode == http.StatusOK
		}, "the capsule's HTTP server answers through the port proxy")
		if strings.TrimSpace(body) != "served-by-gvisor" {
			t.Errorf("through the port proxy: %q", body)
		}
	})
}

// gvisorCProgram is built with make in the compatibility suite: threads
// and stdio.
const gvisorCProgram = `#include <pthread.h>
#include <stdio.h>
static void *f(void *a) { return a; }
int main(void) {
	pthread_t t;
	void *r;
	pthread_create(&t, 0, f, (void *)42);
	pthread_join(t, &r);
	printf("%ld\n", (long)r);
	return 0;
}
`
