package portproxy

import (
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{"/proxy/cl-a/8080", "/proxy/cl-a/8080/", "/proxy/cl-a/80/x%2Fy?q", "/proxy//1/", "/proxy/a/0/", "/proxy/a/65536", "/other"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		capsule, port, rest, ok := parse(p)
		if !ok {
			return
		}
		if capsule == "" || strings.Contains(capsule, "/") {
			t.Fatalf("parse(%q): capsule %q", p, capsule)
		}
		if port < 1 || port > 65535 {
			t.Fatalf("parse(%q): port %d", p, port)
		}
		if !strings.HasPrefix(rest, "/") || !strings.HasSuffix(p, strings.TrimPrefix(rest, "/")) {
			t.Fatalf("parse(%q): rest %q is not the tail of the path", p, rest)
		}
	})
}

func FuzzRewriteLocation(f *testing.F) {
	for _, s := range []string{"/a", "//evil.example/x", "http://10.0.0.2:8080/p?q#f", "https://example.com/", "rel/path", "", "http://[::1", "/"} {
		f.Add(s, "/proxy/cl-a/8080")
	}
	f.Fuzz(func(t *testing.T, loc, prefix string) {
		got := rewriteLocation(loc, prefix, "10.0.0.2:8080", "agent:50051")
		if strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") && got != prefix+loc {
			t.Fatalf("root-relative %q with prefix %q: got %q", loc, prefix, got)
		}
		if strings.HasPrefix(loc, "//") && got != loc {
			t.Fatalf("scheme-relative %q must be left alone, got %q", loc, got)
		}
	})
}
