// Package apitest holds test helpers shared by the control plane's HTTP
// tests: real stores (SQLite in a temp dir, PostgreSQL in a fresh
// database) that are removed when the test ends.
package apitest

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

// PostgresDSNEnv names the variable holding a DSN of a role that may
// CREATE DATABASE (scripts/postgres.sh prints one). Without it the
// PostgreSQL runs fail: they are part of the suite, not optional.
const PostgresDSNEnv = "WRENN_TEST_POSTGRES_DSN"

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
func SQLite(tb testing.TB) store.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := sqlite.Open(ctx, sqlite.Options{Path: filepath.Join(tb.TempDir(), "wrenn.db")})
	if err != nil {
		tb.Fatalf("open sqlite: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// PostgresDSN creates a fresh database and returns its DSN; the database
// is dropped when the test ends.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv(PostgresDSNEnv)
	if base == "" {
		tb.Fatalf("%s is not set: run `export %s=$(scripts/postgres.sh)` (starts a local PostgreSQL and prints its DSN)", PostgresDSNEnv, PostgresDSNEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("connect %s: %v (is PostgreSQL running? run scripts/postgres.sh)", PostgresDSNEnv, err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "wrenn_api_" + hex.EncodeToString(b[:])
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
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		tb.Fatalf("%s must be a postgres:// URL: %q", PostgresDSNEnv, base)
	}
	u.Path = "/" + name
	return u.String()
}

// Postgres opens a migrated PostgreSQL store on a fresh database.
func Postgres(tb testing.TB) store.Store {
	tb.Helper()
	dsn := PostgresDSN(tb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
	if err != nil {
		tb.Fatalf("open postgres: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
