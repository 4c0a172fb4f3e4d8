package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestStoreIsFresh fails when internal/store/postgres/store.go differs from
// what this generator makes of internal/store/sqlite/store.go (run `make
// gen`), so a fix in one dialect cannot silently miss the other.
func TestStoreIsFresh(t *testing.T) {
	src, err := os.ReadFile("../../sqlite/store.go")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Transform(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../store.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("internal/store/postgres/store.go is stale or edited by hand: run 'make gen'")
	}
}

func TestTransformRules(t *testing.T) {
	src := "// This file maps.\n// internal/store/postgres/store.go; the dialects differ\n\npackage sqlite\n\n" +
		"import (\n\tdb \"github.com/wrenn-dev/wrenn/internal/store/sqlite/sqlitedb\"\n)\n"
	got, err := Transform([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s := string(got)
	if !strings.HasPrefix(s, Header) {
		t.Errorf("no generated header: %q", s)
	}
	for _, w := range []string{"package postgres\n", `internal/store/postgres/pgdb"`, "// internal/store/sqlite/store.go; the dialects"} {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	// A rule that no longer matches (or matches twice) is an error, not a
	// silently wrong copy.
	if _, err := Transform([]byte(strings.Replace(src, "package sqlite\n", "package other\n", 1))); err == nil {
		t.Error("missing package clause: no error")
	}
	if _, err := Transform([]byte(src + "package sqlite\n")); err == nil {
		t.Error("duplicated package clause: no error")
	}
}
