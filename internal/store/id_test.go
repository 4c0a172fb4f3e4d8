package store_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestIsID(t *testing.T) {
	for range 100 {
		if id := store.NewID(store.PrefixTemplate); !store.IsID(store.PrefixTemplate, id) {
			t.Fatalf("IsID(%q) = false", id)
		}
	}
	for _, s := range []string{"", "tpl-", "tpl-abc", "base", "minimal", "cl-0123456789abcdef", "tpl-0123456789abcdeF", "tpl-0123456789abcdeu", "tpl-0123456789abcdef0", "tpl_0123456789abcdef"} {
		if store.IsID(store.PrefixTemplate, s) {
			t.Errorf("IsID(%q) = true", s)
		}
	}
	if !store.IsID(store.PrefixTemplate, "tpl-0123456789abcdef") {
		t.Error("a well-formed id refused")
	}
}
