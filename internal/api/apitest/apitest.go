// Package apitest holds test helpers shared by the control plane's HTTP
// tests: real stores (SQLite in a temp dir, PostgreSQL in a fresh
// database) that are removed when the test ends. It names them for table
// tests; the stores themselves come from internal/testutil/teststore.
package apitest

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil/teststore"
)

// PostgresDSNEnv names the variable holding a DSN of a role that may
// CREATE DATABASE (scripts/postgres.sh prints one). Without it the
// PostgreSQL runs fail: they are part of the suite, not optional.
const PostgresDSNEnv = teststore.DSNEnv

// Opener opens a fresh store for a test.
type Opener struct {
	Name string
	Open func(tb testing.TB) store.Store
}

// Stores lists both stores.
func Stores() []Opener {
	return []Opener{{"sqlite", SQLite}, {"postgres", Postgres}}
}

// SQLite opens a migrated SQLite store in a temp dir.
func SQLite(tb testing.TB) store.Store { tb.Helper(); return teststore.Open(tb, teststore.SQLite) }

// Postgres opens a migrated PostgreSQL store on a fresh database.
func Postgres(tb testing.TB) store.Store { tb.Helper(); return teststore.Open(tb, teststore.Postgres) }

// PostgresDSN creates a fresh database and returns its DSN; the database
// is dropped when the test ends.
func PostgresDSN(tb testing.TB) string { tb.Helper(); return teststore.PostgresDSN(tb) }
