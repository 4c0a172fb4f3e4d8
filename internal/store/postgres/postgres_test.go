package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/store/postgres"
	"github.com/wrenn-dev/wrenn/internal/store/storetest"
)

// dsnEnv names the variable holding an admin-capable DSN (a role that may
// CREATE DATABASE); scripts/postgres.sh prints one.
const dsnEnv = "WRENN_TEST_POSTGRES_DSN"

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// TestMain drops the migrated template database this package's tests
// clone (see newStore).
func TestMain(m *testing.M) {
	code := m.Run()
	if templateName != "" {
		if err := dropDatabase(os.Getenv(dsnEnv), templateName); err != nil {
			fmt.Fprintln(os.Stderr, "drop template database:", err)
		}
	}
	os.Exit(code)
}

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func withDatabase(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		return "", fmt.Errorf("%s must be a postgres:// URL: %q", dsnEnv, base)
	}
	u.Path = "/" + name
	return u.String(), nil
}

func adminExec(base, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, base)
	if err != nil {
		return fmt.Errorf("connect %s: %w (is PostgreSQL running? run scripts/postgres.sh)", dsnEnv, err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	_, err = c.Exec(ctx, sql)
	return err
}

func dropDatabase(base, name string) error {
	return adminExec(base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
}

// migratedTemplate creates, once per test binary, a database with every
// migration applied; each store is a cheap copy of it (CREATE DATABASE …
// TEMPLATE), which is much faster than migrating every fresh database.
func migratedTemplate(base string) (string, error) {
	templateOnce.Do(func() {
		name := randomName("wrenn_tpl_")
		if templateErr = adminExec(base, "CREATE DATABASE "+name); templateErr != nil {
			return
		}
		templateName = name
		dsn, err := withDatabase(base, name)
		if err != nil {
			templateErr = err
			return
		}
		templateErr = postgres.MigrateUp(dsn)
	})
	return templateName, templateErr
}

// newStore creates a fresh, randomly named database (a copy of the migrated
// template), opens a store on it, and drops the database when the test ends.
func newStore(tb testing.TB) store.Store {
	tb.Helper()
	base := os.Getenv(dsnEnv)
	if base == "" {
		tb.Fatalf("%s is not set: run `export %s=$(scripts/postgres.sh)` (starts a local PostgreSQL and prints its DSN)", dsnEnv, dsnEnv)
	}
	tpl, err := migratedTemplate(base)
	if err != nil {
		tb.Fatalf("template database: %v", err)
	}
	name := randomName("wrenn_test_")
	if err := adminExec(base, "CREATE DATABASE "+name+" TEMPLATE "+tpl); err != nil {
		tb.Fatalf("create database: %v", err)
	}
	tb.Cleanup(func() {
		if err := dropDatabase(base, name); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	dsn, err := withDatabase(base, name)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Open still runs the migrations: a no-op here, which also checks the
	// copy is at the latest version.
	s, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func TestStore(t *testing.T) {
	if os.Getenv(dsnEnv) == "" {
		t.Fatalf("%s is not set: run `export %s=$(scripts/postgres.sh)` (starts a local PostgreSQL and prints its DSN)", dsnEnv, dsnEnv)
	}
	storetest.Run(t, newStore)
}

func BenchmarkListCapsules(b *testing.B) { storetest.BenchListCapsules(b, newStore, 10000) }
