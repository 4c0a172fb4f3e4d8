package runtime_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// TestNormalize: the shared first step of the drivers' create checks the
// ID, looks the template up and fills zero resources only.
func TestNormalize(t *testing.T) {
	templates := map[string]string{"minimal": "tmpl-minimal"}
	get := func(name string) (string, error) {
		if v, ok := templates[name]; ok {
			return v, nil
		}
		return "", errors.New("no such directory")
	}
	def := runtime.Defaults{VCPUs: 1, MemoryMB: 512, DiskSizeMB: 5120}
	spec, tmpl, err := runtime.Normalize(runtime.Spec{ID: "cl-1", Template: "minimal", MemoryMB: 1024}, def, get)
	if err != nil || tmpl != "tmpl-minimal" || spec.VCPUs != 1 || spec.MemoryMB != 1024 || spec.DiskSizeMB != 5120 {
		t.Fatalf("got %+v, %q, %v", spec, tmpl, err)
	}
	for _, id := range []string{"", "-x", "a/b", "../x", strings.Repeat("a", 64)} {
		if _, _, err := runtime.Normalize(runtime.Spec{ID: id, Template: "minimal"}, def, get); !errors.Is(err, runtime.ErrInvalidSpec) {
			t.Errorf("id %q: err = %v, want ErrInvalidSpec", id, err)
		}
	}
	if _, _, err := runtime.Normalize(runtime.Spec{ID: "cl-2", Template: "nope"}, def, get); !errors.Is(err, runtime.ErrNoTemplate) || !strings.Contains(err.Error(), "no such directory") {
		t.Fatalf("unknown template: err = %v", err)
	}
	if !runtime.ValidID(strings.Repeat("a", 63)) {
		t.Fatal("a 63-character id is valid")
	}
}
