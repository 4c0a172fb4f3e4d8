package store_test

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

func TestCursorRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		c    store.Cursor
	}{
		{"int id", store.Cursor{Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), IntID: 42}},
		{"text id", store.Cursor{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), StrID: "cl-abc"}},
		{"epoch", store.Cursor{Time: time.Unix(0, 0).UTC()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.DecodeCursor(store.EncodeCursor(tc.c))
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(tc.c.Time) || got.IntID != tc.c.IntID || got.StrID != tc.c.StrID {
				t.Fatalf("got %+v, want %+v", got, tc.c)
			}
		})
	}
	start, err := store.DecodeCursor("")
	if err != nil || !start.Time.Equal(store.MaxTime) {
		t.Fatalf("empty cursor: got %+v, %v; want the start position", start, err)
	}
	for _, bad := range []string{"!!", "AAAA", strings.Repeat("A", 500)} {
		if _, err := store.DecodeCursor(bad); !errors.Is(err, store.ErrInvalidCursor) {
			t.Fatalf("DecodeCursor(%q): got %v, want ErrInvalidCursor", bad, err)
		}
	}
}

func FuzzDecodeCursor(f *testing.F) {
	f.Add("")
	f.Add(store.EncodeCursor(store.Cursor{Time: time.Now(), IntID: 7, StrID: "cl-x"}))
	f.Add("%%%")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := store.DecodeCursor(s)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidCursor) {
				t.Fatalf("error %v is not ErrInvalidCursor", err)
			}
			return
		}
		if s == "" {
			return
		}
		// A cursor that decodes re-encodes to a cursor that decodes the same.
		again, err := store.DecodeCursor(store.EncodeCursor(c))
		if err != nil || !again.Time.Equal(c.Time) || again.IntID != c.IntID || again.StrID != c.StrID {
			t.Fatalf("re-decode: %+v, %v; want %+v", again, err, c)
		}
	})
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^cl-[0-9a-z]{16}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := store.NewID(store.PrefixCapsule)
		if !re.MatchString(id) {
			t.Fatalf("NewID = %q, want %s", id, re)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestHelpers(t *testing.T) {
	limits := []struct{ n, want int }{{0, 50}, {-3, 50}, {1, 1}, {999, 999}, {5000, 1000}}
	for _, tc := range limits {
		if got := store.ClampLimit(tc.n, 50, 1000); got != tc.want {
			t.Errorf("ClampLimit(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	ny := time.FixedZone("NY", -5*3600)
	days := []struct {
		in   time.Time
		want time.Time
	}{
		{time.Date(2026, 2, 1, 23, 30, 0, 0, ny), time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)},
		{time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tc := range days {
		if got := store.Day(tc.in); !got.Equal(tc.want) || got.Location() != time.UTC {
			t.Errorf("Day(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := store.NormalizeEmail("  Bob@Example.COM "); got != "bob@example.com" {
		t.Errorf("NormalizeEmail = %q", got)
	}
	if got := store.Truncate(time.Date(2026, 1, 1, 0, 0, 0, 1999, ny)); got.Nanosecond() != 1000 || got.Location() != time.UTC {
		t.Errorf("Truncate = %v", got)
	}
}

// TestDependencies keeps the domain package and the conformance suite free
// of SQL drivers: only internal/store/{sqlite,postgres} may import them.
func TestDependencies(t *testing.T) {
	forbidden := []string{"database/sql", "github.com/jackc/", "modernc.org/", "github.com/golang-migrate/"}
	for _, pkg := range []string{".", "./storetest"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
