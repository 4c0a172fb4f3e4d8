// Package teststore opens fresh, migrated control-plane stores for tests on
// every engine Wrenn supports, so a test can run the same assertions on
// SQLite and PostgreSQL:
//
//	for _, eng := range teststore.Engines {
//		t.Run(eng, func(t *testing.T) { s := teststore.Open(t, eng); … })
//	}
//
// PostgreSQL needs WRENN_TEST_POSTGRES_DSN (a role that may CREATE
// DATABASE; `scripts/postgres.sh` starts a local server and prints one).
// Without it the PostgreSQL run fails rather than skips: CI always has it.
package teststore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/store/postgres"
	"github.com/wrenn-dev/wrenn/internal/store/sqlite"
)

// Engine names.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// Engines lists every supported engine.
var Engines = []string{SQLite, Postgres}

// DSNEnv names the variable holding the PostgreSQL admin DSN.
const DSNEnv = "WRENN_TEST_POSTGRES_DSN"

// Open returns a fresh store on engine, closed (and its database dropped)
// when the test ends.
func Open(tb testing.TB, engine string) store.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch engine {
	case SQLite:
		s, err := sqlite.Open(ctx, sqlite.Options{Path: filepath.Join(tb.TempDir(), "wrenn.db")})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = s.Close() })
		return s
	case Postgres:
		return openPostgres(ctx, tb)
	}
	tb.Fatalf("unknown engine %q", engine)
	return nil
}

func openPostgres(ctx context.Context, tb testing.TB) store.Store {
	s, err := postgres.Open(ctx, postgres.Options{DSN: PostgresDSN(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// PostgresDSN creates a fresh, empty database and returns its DSN; the
// database is dropped when the test ends.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv(DSNEnv)
	if base == "" {
		tb.Fatalf("%s is not set: run `export %s=$(scripts/postgres.sh)` (starts a local PostgreSQL and prints its DSN)", DSNEnv, DSNEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("connect to PostgreSQL: %v (run scripts/postgres.sh)", err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "wrenn_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			tb.Errorf("drop database %s: %v", name, err)
			return
		}
		defer func() { _ = c.Close(context.Background()) }()
		// The store's own pool is closed by now (cleanups run last-in
		// first-out). A plain DROP ends autovacuum workers itself; FORCE
		// would need rights over them that this role lacks. A connection
		// still closing makes DROP fail with "being accessed": retry.
		var derr error
		for range 20 {
			if _, derr = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name); derr == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("drop database %s: %v (plain drop: %v)", name, err, derr)
		}
	})
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		tb.Fatalf("%s must be a postgres:// URL", DSNEnv)
	}
	u.Path = "/" + name
	return u.String()
}
