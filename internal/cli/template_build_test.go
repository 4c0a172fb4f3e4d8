package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestTemplateBuildMinimal(t *testing.T) {
	testutil.RequireRoot(t)
	home := t.TempDir()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), []string{"template", "prepare", "minimal", "--home", home}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "Built template minimal") {
		t.Errorf("output = %q", out.String())
	}
	if _, err := os.Stat(filepath.Join(home, "templates", "minimal")); err != nil {
		t.Fatalf("template not built: %v", err)
	}
	// Unknown names are refused with a pointer to import.
	errOut.Reset()
	if code := Main(context.Background(), []string{"template", "prepare", "ubuntu", "--home", home}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "wrenn template build") {
		t.Fatalf("unknown template: exit %d, stderr %q", code, errOut.String())
	}
}
