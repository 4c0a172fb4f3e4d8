package storetest

import (
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"testing"
)

var migrationName = regexp.MustCompile(`^(\d{6})_([a-z0-9_]+)\.(up|down)\.sql$`)

// CheckMigrationFiles checks a dialect's embedded migrations directory:
// every file is named NNNNNN_name.up.sql or NNNNNN_name.down.sql, every up
// has its down, and versions run 1, 2, 3, … without gaps.
func CheckMigrationFiles(t *testing.T, fsys fs.FS, dir string) {
	t.Helper()
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	type pair struct{ up, down bool }
	byVersion := map[string]*pair{}
	names := map[string]string{}
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("migration file %q is not NNNNNN_name.(up|down).sql", e.Name())
			continue
		}
		p := byVersion[m[1]]
		if p == nil {
			p = &pair{}
			byVersion[m[1]] = p
		}
		if n, ok := names[m[1]]; ok && n != m[2] {
			t.Errorf("version %s has two names: %s and %s", m[1], n, m[2])
		}
		names[m[1]] = m[2]
		if m[3] == "up" {
			p.up = true
		} else {
			p.down = true
		}
	}
	versions := make([]string, 0, len(byVersion))
	for v, p := range byVersion {
		versions = append(versions, v)
		if !p.up || !p.down {
			t.Errorf("version %s: up=%v down=%v, want both", v, p.up, p.down)
		}
	}
	slices.Sort(versions)
	for i, v := range versions {
		if want := fmt.Sprintf("%06d", i+1); v != want {
			t.Errorf("migration versions %v: want %s at position %d", versions, want, i)
			break
		}
	}
	if len(versions) == 0 {
		t.Error("no migrations")
	}
}
