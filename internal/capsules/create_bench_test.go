package capsules_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// BenchmarkCreate: the capsule service's create against an agent that
// answers at once (SQLite store): the control plane's own share of a
// warm create.
func BenchmarkCreate(b *testing.B) {
	f := newFixture(&testing.T{})
	ctx := testutil.Context(&testing.T{}, testutil.Long)
	tmpl := "minimal"
	for b.Loop() {
		if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl}); err != nil {
			b.Fatal(err)
		}
	}
}
