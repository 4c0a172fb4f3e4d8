package capsules

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestTemplateNaming(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"py", "py"}, {"py:latest", "py"}, {"py:v2", "py:v2"}, {"py:latest2", "py:latest2"},
	} {
		if got := NormalizeTemplateName(tc.in); got != tc.want {
			t.Errorf("NormalizeTemplateName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		name    string
		t       store.Template
		host    string
		pinHost string
	}{
		{"seeded public", store.Template{ID: "tpl-1", Name: "base", Public: true}, "base", ""},
		{"public built on a host", store.Template{ID: "tpl-2", Name: "tools", Public: true, HostID: "h"}, "tools", "h"},
		{"public shared", store.Template{ID: "tpl-3", Name: "tools", Public: true, HostID: "h", Checksum: "x"}, "tpl-3", ""},
		{"public tagged", store.Template{ID: "tpl-4", Name: "tools:v1", Public: true}, "tpl-4", ""},
		{"team on a host", store.Template{ID: "tpl-5", Name: "mine", HostID: "h"}, "tpl-5", "h"},
		{"team shared", store.Template{ID: "tpl-6", Name: "mine:v2", HostID: "h", Checksum: "x"}, "tpl-6", ""},
	} {
		if got := HostTemplateName(tc.t); got != tc.host {
			t.Errorf("%s: HostTemplateName = %q, want %q", tc.name, got, tc.host)
		}
		if got := PinnedHost(tc.t); got != tc.pinHost {
			t.Errorf("%s: PinnedHost = %q, want %q", tc.name, got, tc.pinHost)
		}
	}
	for _, ok := range []string{"py", "py:v2", "a.b_c-d:1.0"} {
		if !templateNameRE.MatchString(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"Py", "py:", ":v1", "py:v1:v2", "py v1", "py:V1"} {
		if templateNameRE.MatchString(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
