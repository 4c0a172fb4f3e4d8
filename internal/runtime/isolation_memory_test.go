package runtime_test

import (
	"context"
	"errors"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// namedDriver is a driver that only has a name (calls beyond Name panic).
type namedDriver struct {
	runtime.Driver
	name string
}

func (d *namedDriver) Name() string { return d.name }

// memDriver also restores and exports template memory.
type memDriver struct{ namedDriver }

func (d *memDriver) MemoryTemplates() (bool, string) { return true, "" }

func (d *memDriver) ExportMemory(context.Context, string, string) (map[string]string, error) {
	return map[string]string{"by": d.name}, nil
}

func (d *memDriver) CreateFromMemory(_ context.Context, spec runtime.Spec, _ string, _ map[string]string) (runtime.Info, error) {
	return runtime.Info{ID: spec.ID}, nil
}

// TestIsolationsMemoryTemplates: the router passes memory templates on to
// the driver of the capsule's isolation (the agent boots the capsule when
// that driver cannot restore memory), so an agent holding runtime.Isolations
// keeps the container driver's memory templates.
func TestIsolationsMemoryTemplates(t *testing.T) {
	ctx := context.Background()
	isos := runtime.NewIsolations(runtime.IsolationContainer)
	isos.Register(runtime.IsolationContainer, &memDriver{namedDriver{name: "container"}})
	isos.Register(runtime.IsolationGVisor, &namedDriver{name: "gvisor"})
	if ok, why := isos.MemoryTemplates(); !ok {
		t.Fatalf("MemoryTemplates = false (%s), want the default driver's true", why)
	}
	if _, err := isos.CreateFromMemory(ctx, runtime.Spec{ID: "gv1", Isolation: runtime.IsolationGVisor}, "a", nil); !errors.Is(err, runtime.ErrNotSupported) {
		t.Fatalf("gvisor CreateFromMemory: err = %v, want ErrNotSupported", err)
	}
	if got := isos.Isolation("gv1"); got != "" {
		t.Fatalf("a refused restore left the capsule claimed by %q", got)
	}
	info, err := isos.CreateFromMemory(ctx, runtime.Spec{ID: "cl1"}, "a", nil)
	if err != nil || info.Isolation != runtime.IsolationContainer {
		t.Fatalf("container CreateFromMemory: %+v, %v", info, err)
	}
	md, err := isos.ExportMemory(ctx, "cl1", "dst")
	if err != nil || md["by"] != "container" {
		t.Fatalf("ExportMemory: %v, %v", md, err)
	}
	if _, err := isos.ExportMemory(ctx, "nope", "dst"); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("ExportMemory of an unknown capsule: %v", err)
	}
}
