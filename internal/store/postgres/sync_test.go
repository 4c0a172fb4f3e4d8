package postgres

import (
	"os"
	"strings"
	"testing"
)

// TestStoreBodyMatchesSQLite: store.go is shared text between the dialects
// (only the package clause and the generated package's import differ), so a
// fix in one cannot silently miss the other. Refresh this copy with
//
//	sed -e 's/^package sqlite$/package postgres/' \
//	    -e 's|store/sqlite/sqlitedb"|store/postgres/pgdb"|' \
//	    -e 's|internal/store/postgres/store.go; the dialects|internal/store/sqlite/store.go; the dialects|' \
//	    internal/store/sqlite/store.go > internal/store/postgres/store.go
func TestStoreBodyMatchesSQLite(t *testing.T) {
	pg, err := os.ReadFile("store.go")
	if err != nil {
		t.Fatal(err)
	}
	lite, err := os.ReadFile("../sqlite/store.go")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		"package sqlite\n", "package postgres\n",
		`store/sqlite/sqlitedb"`, `store/postgres/pgdb"`,
		"internal/store/postgres/store.go; the dialects", "internal/store/sqlite/store.go; the dialects",
	).Replace(string(lite))
	if string(pg) != want {
		t.Fatal("internal/store/postgres/store.go differs from internal/store/sqlite/store.go; regenerate it (see this test's comment)")
	}
}
