package sqlite_test

import (
	"database/sql"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/store/sqlite"
	"github.com/wrenn-dev/wrenn/internal/store/storetest"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func newStore(tb testing.TB) store.Store {
	tb.Helper()
	s, err := sqlite.Open(tb.Context(), sqlite.Options{Path: filepath.Join(tb.TempDir(), "wrenn.db")})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func TestStore(t *testing.T) { storetest.Run(t, newStore) }

func BenchmarkListCapsules(b *testing.B) { storetest.BenchListCapsules(b, newStore, 10000) }

// TestConcurrentWriters hammers one database file from two Store values
// (as two processes would) and many goroutines each: the single writer
// connection per Store plus busy_timeout and BEGIN IMMEDIATE mean no write
// fails with SQLITE_BUSY.
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wrenn.db")
	ctx := testutil.Context(t, testutil.Long)
	var stores []*sqlite.Store
	for range 2 {
		s, err := sqlite.Open(ctx, sqlite.Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		stores = append(stores, s)
	}
	team, err := stores[0].CreateTeam(ctx, store.Team{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	workers, each := 16, 50
	if testing.Short() {
		each = 15
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%2]
			for range each {
				c, err := s.CreateCapsule(ctx, store.Capsule{TeamID: team.ID, TemplateID: "tpl-base", Status: store.CapsuleRunning, AccessTokenHash: "h"})
				if err == nil {
					_, err = s.UpdateCapsuleStatus(ctx, team.ID, c.ID, store.CapsuleRunning, store.CapsulePaused)
				}
				if err == nil {
					err = s.InsertMetricSnapshots(ctx, []store.MetricSnapshot{{CapsuleID: c.ID, TeamID: team.ID, TS: time.Now(), IntervalMS: 1000}})
				}
				if err == nil {
					_, _, err = s.ListCapsules(ctx, team.ID, store.CapsuleFilter{Limit: 10})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	counts, err := stores[1].CountCapsulesByStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := counts[store.CapsulePaused], int64(workers*each); got != want {
		t.Fatalf("paused capsules: got %d, want %d", got, want)
	}
}

// TestPragmas checks the connection settings the package promises.
func TestPragmas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wrenn.db")
	ctx := testutil.Context(t, testutil.Short)
	s, err := sqlite.Open(ctx, sqlite.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	got, err := s.Pragmas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"journal_mode": "wal", "foreign_keys": "1", "busy_timeout": "10000"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("PRAGMA %s = %q, want %q", k, got[k], v)
		}
	}
}

// TestMigrateTo steps the schema down past the seed and back up. The
// store only opens on the latest schema (it prepares every query), so the
// intermediate versions are checked with plain SQL.
func TestMigrateTo(t *testing.T) {
	ctx := testutil.Context(t, testutil.Short)
	o := sqlite.Options{Path: filepath.Join(t.TempDir(), "wrenn.db")}
	platformTeams := func() int {
		t.Helper()
		db, err := sql.Open("sqlite", o.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM teams WHERE id = 'team-platform'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := sqlite.MigrateTo(o, 3); err != nil {
		t.Fatal(err)
	}
	if n := platformTeams(); n != 0 {
		t.Fatalf("platform team at version 3: %d rows, want none", n)
	}
	if _, err := sqlite.Open(ctx, sqlite.Options{Path: o.Path, SkipMigrate: true}); err == nil {
		t.Fatal("Open with SkipMigrate on an older schema: want a prepare error")
	}
	if err := sqlite.MigrateTo(o, 8); err != nil { // the latest version
		t.Fatal(err)
	}
	if n := platformTeams(); n != 1 {
		t.Fatalf("platform team at version 8: %d rows, want 1", n)
	}
	if err := sqlite.MigrateUp(o); err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(ctx, sqlite.Options{Path: o.Path, SkipMigrate: true})
	if err != nil {
		t.Fatalf("open on the latest schema: %v", err)
	}
	if _, err := s.GetPlatformTeam(ctx); err != nil {
		t.Fatalf("platform team through the store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sqlite.MigrateTo(o, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlite.Open(ctx, sqlite.Options{Path: o.Path, SkipMigrate: true}); err == nil {
		t.Fatal("Open with SkipMigrate on a partial schema: want a prepare error")
	}
}
