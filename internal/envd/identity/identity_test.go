package identity

import (
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestUsernameFromHeader(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name, header, want string
		wantErr            bool
	}{
		{"e2b style user with empty password", "Basic " + b64("user:"), "user", false},
		{"user and password", "Basic " + b64("root:secret"), "root", false},
		{"lowercase scheme", "basic " + b64("alice:"), "alice", false},
		{"no colon", "Basic " + b64("bob"), "bob", false},
		{"bearer is not ours", "Bearer abc", "", false},
		{"empty", "", "", false},
		{"malformed base64", "Basic !!!", "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := UsernameFromHeader(tc.header)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %q, %v; want %q, err=%v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestUsernameFromRequestQueryWins(t *testing.T) {
	r := httptest.NewRequest("GET", "/files?username=alice", nil)
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("bob:")))
	if got, _ := UsernameFromRequest(r, true); got != "alice" {
		t.Fatalf("with query allowed got %q, want alice", got)
	}
	if got, _ := UsernameFromRequest(r, false); got != "bob" {
		t.Fatalf("without query got %q, want bob", got)
	}
}

func TestLookup(t *testing.T) {
	u, err := Lookup("root")
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != 0 || u.GID != 0 || u.Home == "" {
		t.Fatalf("root = %+v", u)
	}
	for _, name := range []string{"", "no-such-user-wrenn", strings.Repeat("a", 100), "a:b", "a/b", "a b"} {
		if _, err := Lookup(name); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("Lookup(%q) err = %v, want ErrUnknownUser", name, err)
		}
	}
	// Numeric users (an image's USER 1000 or 1000:1000): the uid's
	// account when there is one, else a user without an entry.
	if u, err := Lookup("0"); err != nil || u.UID != 0 || u.Name != "root" {
		t.Errorf("Lookup(0) = %+v, %v; want root", u, err)
	}
	if u, err := Lookup("0:5"); err != nil || u.UID != 0 || u.GID != 5 || u.Name != "root" {
		t.Errorf("Lookup(0:5) = %+v, %v; want root with gid 5", u, err)
	}
	if u, err := Lookup("4000000"); err != nil || u.UID != 4000000 || u.GID != 0 || u.Home != "/" {
		t.Errorf("Lookup(4000000) = %+v, %v; want uid 4000000 gid 0 home /", u, err)
	}
	if u, err := Lookup("4000000:4000001"); err != nil || u.UID != 4000000 || u.GID != 4000001 {
		t.Errorf("Lookup(4000000:4000001) = %+v, %v", u, err)
	}
	for _, name := range []string{"1:", ":1", "1:2:3", "99999999999", "-1"} {
		if _, err := Lookup(name); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("Lookup(%q) err = %v, want ErrUnknownUser", name, err)
		}
	}
	cur, err := Current()
	if err != nil || cur.UID != uint32(os.Getuid()) { //nolint:gosec // test
		t.Fatalf("Current() = %+v, %v", cur, err)
	}
}

func FuzzUsernameFromHeader(f *testing.F) {
	f.Add("Basic dXNlcjo=")
	f.Add("Basic ")
	f.Add("Basic\x00")
	f.Fuzz(func(t *testing.T, h string) {
		name, err := UsernameFromHeader(h)
		if err == nil && name != "" {
			// Whatever came out must round-trip through validation without panicking.
			_, _ = Lookup(name)
		}
	})
}

// TestLookupCache: a repeated lookup is answered from the cache, a change
// to either account file (its size, times or inode) makes the next lookup
// read the files again, and callers get copies they may change.
func TestLookupCache(t *testing.T) {
	dir := t.TempDir()
	saved := accountFiles
	t.Cleanup(func() { accountFiles = saved })
	for i := range accountFiles {
		accountFiles[i] = dir + "/" + strconv.Itoa(i)
		if err := os.WriteFile(accountFiles[i], []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lookups := func(name string) uint64 {
		t.Helper()
		before := userCache.misses.Load()
		u, err := Lookup(name)
		if err != nil || u.UID != 0 {
			t.Fatalf("Lookup(%s) = %+v, %v", name, u, err)
		}
		u.UID, u.Groups = 99, append(u.Groups, 99) // must not reach the cache
		return userCache.misses.Load() - before
	}
	lookups("root")
	if n := lookups("root"); n != 0 {
		t.Fatalf("second lookup read the files (%d misses)", n)
	}
	if _, err := Current(); err != nil {
		t.Fatal(err)
	}
	for i, path := range accountFiles {
		if err := os.WriteFile(path, []byte("xy\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if n := lookups("root"); n != 1 {
			t.Fatalf("lookup after file %d changed: %d misses, want 1", i, n)
		}
		if n := lookups("root"); n != 0 {
			t.Fatalf("lookup after file %d settled: %d misses, want 0", i, n)
		}
	}
	if err := os.Remove(accountFiles[1]); err != nil {
		t.Fatal(err)
	}
	if n := lookups("root"); n != 1 {
		t.Fatalf("lookup after a file vanished: %d misses, want 1", n)
	}
	if _, err := Lookup("no-such-user-wrenn"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("unknown user: %v", err)
	}
}
