package deptest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// imports lists pkg's direct imports.
func imports(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

// TestCapsuleServiceImportsNoHTTP: the capsule service is reached through
// thin transports (REST, WebSocket, E2B, the dashboard); it knows none of
// them. Its limits package is a leaf anyone may import.
func TestCapsuleServiceImportsNoHTTP(t *testing.T) {
	for _, p := range imports(t, "../../internal/capsules") {
		if p == "net/http" || strings.HasPrefix(p, "github.com/go-chi/") || strings.HasPrefix(p, module+"/internal/api") {
			t.Errorf("internal/capsules imports %s: the service must not know HTTP", p)
		}
	}
	if got := imports(t, "../../internal/capsules/limits"); len(got) != 0 {
		t.Errorf("internal/capsules/limits imports %v: it must stay a leaf (no imports)", got)
	}
}

// lifecycleCalls are the agent life-cycle RPCs and the store's capsule
// transitions: only the capsule service may call them.
var lifecycleCalls = []string{
	"CreateCapsule", "DestroyCapsule", "PauseCapsule", "ResumeCapsule", "SetCapsuleTimeout", "PingCapsule",
	"UpdateCapsuleStatus", "FailCapsule", "DeleteCapsule",
}

// lifecycleAllowed are the directories whose code may make those calls:
// the service, the store that implements them (and its generated
// queries), and the generated RPC code.
// internal/fleet is test infrastructure: its Stop destroys, on the agents
// directly, capsules the store no longer knows (like a test's cleanup).
var lifecycleAllowed = []string{"internal/capsules", "internal/store", "proto", "internal/fleet"}

// TestOnlyTheCapsuleServiceDrivesTheLifeCycle parses every non-test Go file
// of the module and fails on a call of a life-cycle method (by name)
// outside the capsule service. Tests are exempt: they set up state
// directly.
func TestOnlyTheCapsuleServiceDrivesTheLifeCycle(t *testing.T) {
	root := "../.."
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || name == "node_modules" || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			if slices.ContainsFunc(lifecycleAllowed, func(a string) bool { return rel == a || strings.HasPrefix(rel, a+"/") }) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if ok && slices.Contains(lifecycleCalls, sel.Sel.Name) {
				t.Errorf("%s: calls %s; capsule life-cycle steps belong to internal/capsules (call the service)", fset.Position(call.Pos()), sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("checked only %d files: is the walk rooted at the module?", checked)
	}
}
