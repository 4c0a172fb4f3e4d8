//go:build heavy

package container_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// TestWorkloadsHeavy builds a template on top of base with a compiler,
// Node.js, a JDK, sqlite3 and strace from Debian's packages, and runs
// each under the allow-list. It needs several hundred MB from Debian's
// archive the first time (cached machine-wide after), so it is built only with
// the heavy tag (make test-heavy), not in make test.
func TestWorkloadsHeavy(t *testing.T) {
	d := newDriver(t)
	buildDebianTemplate(t, "heavy", heavyPackages...)
	ctx := testutil.Context(t, 10*time.Minute)
	startCapsule(t, d, runtime.Spec{ID: "cl-heavy", Template: "heavy", MemoryMB: 1024, VCPUs: 1})
	cases := []struct {
		name, script, want string
	}{
		{"gcc", "cd /tmp && cat > m.c <<'EOF'\n" + cProgram + "EOF\ngcc -O2 -pthread -o m m.c && ./m", "42"},
		{"node", `node -e 'const http = require("http"); const s = http.createServer((q, r) => r.end("node ok")); s.listen(0, "127.0.0.1", () => http.get({port: s.address().port, host: "127.0.0.1"}, r => { let b = ""; r.on("data", d => b += d); r.on("end", () => { console.log(b); s.close(); }); }));'`, "node ok"},
		{"java", `cd /tmp && java -version 2>&1 | grep -c 'version "17' && printf 'public class H { public static void main(String[] a) throws Exception { Thread t = new Thread(() -> System.out.println("java ok " + Runtime.getRuntime().availableProcessors())); t.start(); t.join(); } }\n' > H.java && javac H.java && java -cp . H`, "1\njava ok 1"},
		{"sqlite3", `sqlite3 /tmp/db.sqlite 'create table t(x); insert into t values (1),(2),(3); select sum(x) from t;'`, "6"},
		{"strace", `strace -f -e trace=execve -o /tmp/st sh -c 'true; /bin/echo traced' && grep -c 'execve("/bin/echo"' /tmp/st`, "traced\n1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := mustExec(ctx, t, d, "cl-heavy", "sh", "-c", c.script)
			if strings.TrimSpace(out) != c.want {
				t.Errorf("%s printed %q, want %q", c.name, strings.TrimSpace(out), c.want)
			}
		})
	}
}

// heavyPackages are what the heavy template adds to base.
var heavyPackages = []string{"strace", "gcc", "libc6-dev", "nodejs", "openjdk-17-jdk-headless", "sqlite3"}

// cProgram is compiled and run in the heavy suite: threads and stdio.
const cProgram = `#include <pthread.h>
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
