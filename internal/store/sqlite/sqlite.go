// Package sqlite implements store.Store on an embedded SQLite database
// (modernc.org/sqlite: pure Go, no cgo), the default for `wrenn up`.
//
// Invariants:
//   - The database runs in WAL mode with foreign_keys=ON and a busy_timeout.
//   - All writes go through one connection (a pool of size 1), so writers in
//     this process queue in Go instead of failing with SQLITE_BUSY; reads use
//     a separate read-only pool and never block on writers (WAL).
//   - Write transactions start with BEGIN IMMEDIATE.
//   - Timestamps are INTEGER Unix microseconds (UTC), so they sort and
//     compare exactly; daily_usage.day is TEXT YYYY-MM-DD.
//   - Migrations are embedded (migrations/*.sql, golang-migrate format) and
//     applied on Open unless Options.SkipMigrate is set.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratesqlite "github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/wrenn-dev/wrenn/internal/store"
	db "github.com/wrenn-dev/wrenn/internal/store/sqlite/sqlitedb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options configure Open.
type Options struct {
	// Path is the database file; it is created if missing. In-memory
	// databases are refused: the read and write pools must share the file.
	Path string
	// BusyTimeout bounds how long a statement waits for a lock held by
	// another process (default 10 s).
	BusyTimeout time.Duration
	// ReadConns is the size of the read pool (default 4).
	ReadConns int
	// SkipMigrate leaves the schema as it is.
	SkipMigrate bool
}

// Store is the SQLite store.
type Store struct {
	opts   Options
	w, r   *sql.DB
	qw, qr *db.Queries
}

func dsn(o Options, readOnly bool) string {
	bt := o.BusyTimeout
	if bt <= 0 {
		bt = 10 * time.Second
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", bt.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Set("_txlock", "immediate")
	}
	return "file:" + o.Path + "?" + q.Encode()
}

// Open opens (creating if needed) and migrates the database at o.Path.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Path == "" || strings.Contains(o.Path, ":memory:") || strings.Contains(o.Path, "?") {
		// The writer and reader pools must share one database: a file.
		return nil, fmt.Errorf("sqlite: path %q: want a plain file path", o.Path)
	}
	if !o.SkipMigrate {
		if err := MigrateUp(o); err != nil {
			return nil, err
		}
	}
	w, err := sql.Open("sqlite", dsn(o, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open writer: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	rc := o.ReadConns
	if rc <= 0 {
		rc = 4
	}
	r, err := sql.Open("sqlite", dsn(o, true))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite: open reader: %w", err)
	}
	r.SetMaxOpenConns(rc)
	r.SetMaxIdleConns(rc)
	s := &Store{opts: o, w: w, r: r}
	if err := s.Ping(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	// Prepared once per connection: modernc parses SQL on every unprepared
	// call, which costs as much as reading a page of rows.
	if s.qw, err = db.Prepare(ctx, w); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("sqlite: prepare (is the schema migrated?): %w", err)
	}
	if s.qr, err = db.Prepare(ctx, r); err != nil {
		_ = errors.Join(s.qw.Close(), s.Close())
		return nil, fmt.Errorf("sqlite: prepare: %w", err)
	}
	return s, nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping writer: %w", err)
	}
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping reader: %w", err)
	}
	return nil
}

// Close implements store.Store.
func (s *Store) Close() error {
	var errs []error
	for _, q := range []*db.Queries{s.qr, s.qw} {
		if q != nil {
			errs = append(errs, q.Close())
		}
	}
	return errors.Join(append(errs, s.r.Close(), s.w.Close())...)
}

func newMigrate(o Options) (*migrate.Migrate, error) {
	conn, err := sql.Open("sqlite", dsn(o, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: migrate: open: %w", err)
	}
	conn.SetMaxOpenConns(1)
	drv, err := migratesqlite.WithInstance(conn, &migratesqlite.Config{})
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("sqlite: migrate: driver: %w", err)
	}
	src, err := iofs.New(migrations, "migrations")
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("sqlite: migrate: source: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "sqlite", drv)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("sqlite: migrate: %w", err)
	}
	return m, nil
}

func runMigrate(o Options, what string, f func(*migrate.Migrate) error) error {
	m, err := newMigrate(o)
	if err != nil {
		return err
	}
	err = f(m)
	srcErr, dbErr := m.Close()
	if errors.Is(err, migrate.ErrNoChange) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", what, err)
	}
	return errors.Join(srcErr, dbErr)
}

// MigrateUp applies every pending up-migration.
func MigrateUp(o Options) error {
	return runMigrate(o, "up", func(m *migrate.Migrate) error { return m.Up() })
}

// MigrateDown applies every down-migration, leaving an empty schema.
func MigrateDown(o Options) error {
	return runMigrate(o, "down", func(m *migrate.Migrate) error { return m.Down() })
}

// MigrateTo migrates up or down to version.
func MigrateTo(o Options, version uint) error {
	return runMigrate(o, fmt.Sprintf("to %d", version), func(m *migrate.Migrate) error { return m.Migrate(version) })
}

// tx runs f in a write transaction (BEGIN IMMEDIATE on the single writer).
func (s *Store) tx(ctx context.Context, f func(q *db.Queries) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	if err := f(s.qw.WithTx(tx)); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// retry runs f once: SQLite serialises writers, so the guarded statements
// never need a retry. It exists so the dialects share store.go.
func (s *Store) retry(_ context.Context, f func() error) error { return f() }

// mapErr turns driver errors into store errors, keeping the cause.
func mapErr(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	var se *msqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%s: %w: %w", what, store.ErrAlreadyExists, err)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("%s: %w: %w", what, store.ErrConflict, err)
		case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL:
			return fmt.Errorf("%s: %w: %w", what, store.ErrInvalid, err)
		}
	}
	for _, e := range []error{store.ErrNotFound, store.ErrAlreadyExists, store.ErrConflict, store.ErrLastAdmin, store.ErrInvalid} {
		if errors.Is(err, e) {
			return err
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Dialect helpers shared with store.go.

func ts(t time.Time) int64 { return t.UnixMicro() }

func tsp(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixMicro()
	return &v
}

func tm(v int64) time.Time { return time.UnixMicro(v).UTC() }

func tmp(v *int64) *time.Time {
	if v == nil {
		return nil
	}
	t := tm(*v)
	return &t
}

func lim(n int) int64 { return int64(n) }

func dayv(t time.Time) string { return store.Day(t).Format(time.DateOnly) }

func dayt(s string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Errorf("sqlite: bad day %q: %w", s, err)
	}
	return t, nil
}

// MigrateDownAll reverts every migration of the open store's database; the
// store is unusable until MigrateUpAll. For tests of the down-migrations.
func (s *Store) MigrateDownAll(_ context.Context) error { return MigrateDown(s.opts) }

// MigrateUpAll applies every pending migration of the open store's database.
func (s *Store) MigrateUpAll(_ context.Context) error { return MigrateUp(s.opts) }

// Pragmas reports the writer connection's journal_mode, foreign_keys and
// busy_timeout, for health checks and tests.
func (s *Store) Pragmas(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range []string{"journal_mode", "foreign_keys", "busy_timeout"} {
		var v string
		if err := s.w.QueryRowContext(ctx, "PRAGMA "+p).Scan(&v); err != nil {
			return nil, fmt.Errorf("sqlite: pragma %s: %w", p, err)
		}
		out[p] = v
	}
	return out, nil
}

// Analyze refreshes the query planner's statistics (ANALYZE). Call it after
// bulk loads.
func (s *Store) Analyze(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("sqlite: analyze: %w", err)
	}
	return nil
}
