// Package deptest enforces the architecture's import rules with `go list`:
// envd (which runs inside capsules) imports only its own packages, the
// generated envd protocol, the standard library and third-party modules;
// domain packages import no transport and no SQL driver.
package deptest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/wrenn-dev/wrenn"

func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

func TestEnvdImportsOnlyItsOwnPackages(t *testing.T) {
	allowed := []string{
		module + "/cmd/envd",
		module + "/internal/envd",
		module + "/proto/envd",
	}
	for _, root := range []string{"../../cmd/envd", "../../internal/envd/..."} {
		for _, p := range deps(t, root) {
			if !strings.HasPrefix(p, module+"/") {
				continue // standard library or third-party
			}
			ok := slices.ContainsFunc(allowed, func(a string) bool { return p == a || strings.HasPrefix(p, a+"/") })
			if !ok {
				t.Errorf("envd depends on %s: envd may import only cmd/envd, internal/envd/..., proto/envd/...", p)
			}
		}
	}
}

// domainRules lists packages that hold domain types and logic, and the
// import prefixes they must not reach (transports and SQL drivers).
var (
	transport = []string{"net/http", "connectrpc.com/", "github.com/go-chi/", "google.golang.org/grpc"}
	sqlDriver = []string{"database/sql", "github.com/jackc/", "modernc.org/sqlite", "github.com/golang-migrate/"}
)

var domainRules = map[string][]string{
	"../../internal/envd/defaults": append(slices.Clone(sqlDriver), "connectrpc.com/"),
	"../../internal/envd/identity": append(slices.Clone(sqlDriver), "connectrpc.com/"),
	"../../internal/store":         slices.Concat(transport, sqlDriver),
	"../../internal/runtime":       slices.Concat(transport, sqlDriver),
	"../../internal/usage":         slices.Concat(transport, sqlDriver),
	"../../internal/audit":         slices.Concat(transport, sqlDriver),
}

func TestDomainPackagesImportNoTransportOrSQL(t *testing.T) {
	for pkg, banned := range domainRules {
		for _, p := range deps(t, pkg) {
			for _, b := range banned {
				if p == b || strings.HasPrefix(p, b) {
					t.Errorf("%s depends on %s, which is forbidden for a domain package", pkg, p)
				}
			}
		}
	}
}

// TestAgentGoesThroughTheRuntimeContract: the host agent reaches a driver's
// snapshots, templates and processes only through internal/runtime's
// interfaces (Snapshotter, SnapshotCollector, TemplateExporter, …), never
// by importing the snapshot engine or a driver package itself.
func TestAgentGoesThroughTheRuntimeContract(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{join .Imports \"\\n\"}}", "../../internal/hostagent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		for _, banned := range []string{module + "/internal/snapshot", module + "/internal/runtime/container"} {
			if p == banned || strings.HasPrefix(p, banned+"/") {
				t.Errorf("internal/hostagent imports %s: use the runtime contract (internal/runtime) instead", p)
			}
		}
	}
}
