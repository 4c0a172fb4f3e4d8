package api

import "testing"

func TestAttachment(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/tmp/page.html", `attachment; filename=page.html`},
		{"/tmp/a b.txt", `attachment; filename="a b.txt"`},
		{`/tmp/q"uote`, `attachment; filename="q\"uote"`},
		{"/tmp/café", `attachment; filename*=utf-8''caf%C3%A9`},
		{"/", `attachment; filename="/"`},
	}
	for _, tt := range tests {
		if got := attachment(tt.path); got != tt.want {
			t.Errorf("attachment(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}
