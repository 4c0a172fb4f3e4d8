package limits_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
)

// TestSDKDocsStateTheDefaults: the Go SDK cannot import this package (it
// is public, this is internal), so its doc comment states the defaults in
// words; this keeps the words equal to the one value.
func TestSDKDocsStateTheDefaults(t *testing.T) {
	src, err := os.ReadFile("../../../sdk/capsules.go")
	if err != nil {
		t.Fatal(err)
	}
	// The CreateParams doc comment, joined into one line.
	text := string(src)
	i := strings.Index(text, "// CreateParams describe")
	j := strings.Index(text, "type CreateParams struct")
	if i < 0 || j < i {
		t.Fatal("sdk/capsules.go: no CreateParams doc comment")
	}
	doc := strings.Join(strings.Fields(strings.ReplaceAll(text[i:j], "//", "")), " ")
	d := limits.Defaults
	internet := "internet off"
	if d.AllowInternet {
		internet = "internet on"
	}
	for _, want := range []string{
		fmt.Sprintf("template %q", d.Template),
		fmt.Sprintf("%d vCPU", d.VCPUs),
		fmt.Sprintf("%d MB memory", d.MemoryMB),
		fmt.Sprintf("%d MB disk", d.DiskSizeMB),
		fmt.Sprintf("%d s timeout", d.TimeoutSec),
		internet,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("sdk CreateParams doc %q does not state %q", doc, want)
		}
	}
}

// TestDefaultsWithinBounds: every default lies within its own bounds.
func TestDefaultsWithinBounds(t *testing.T) {
	d := limits.Defaults
	for _, c := range []struct {
		name        string
		v, min, max int64
	}{
		{"vcpus", d.VCPUs, d.MinVCPUs, d.MaxVCPUs},
		{"memory_mb", d.MemoryMB, d.MinMemoryMB, d.MaxMemoryMB},
		{"disk_size_mb", d.DiskSizeMB, d.MinDiskSizeMB, d.MaxDiskSizeMB},
		{"timeout_sec", d.TimeoutSec, d.MinTimeoutSec, d.MaxTimeoutSec},
	} {
		if c.v < c.min || c.v > c.max || c.min <= 0 {
			t.Errorf("%s default %d outside [%d, %d]", c.name, c.v, c.min, c.max)
		}
	}
	if d.Template == "" {
		t.Error("no default template")
	}
}
