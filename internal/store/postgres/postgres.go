// Package postgres implements store.Store on PostgreSQL through pgx/v5, for
// control planes that run as several stateless replicas.
//
// Invariants:
//   - Migrations are embedded (migrations/*.sql, golang-migrate format),
//     serialised across replicas by golang-migrate's advisory lock, and
//     applied on Open unless Options.SkipMigrate is set.
//   - Statements run at READ COMMITTED. Statements that must not race (the
//     last-admin rule) lock the rows they count (SELECT … FOR UPDATE in a
//     CTE) and are retried on serialization failures and deadlocks.
//   - Timestamps are timestamptz, handled in UTC with microsecond precision.
package postgres

//go:generate go run ./gen

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/wrenn-dev/wrenn/internal/store"
	db "github.com/wrenn-dev/wrenn/internal/store/postgres/pgdb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options configure Open.
type Options struct {
	// DSN is a libpq-style URL or key=value string.
	DSN string
	// MaxConns bounds the pool (default: pgxpool's, max(4, NumCPU)).
	MaxConns int32
	// SkipMigrate leaves the schema as it is.
	SkipMigrate bool
}

// Store is the PostgreSQL store.
type Store struct {
	dsn    string
	pool   *pgxpool.Pool
	qw, qr *db.Queries
}

// Open connects, and migrates unless o.SkipMigrate.
func Open(ctx context.Context, o Options) (*Store, error) {
	if !o.SkipMigrate {
		if err := MigrateUp(o.DSN); err != nil {
			return nil, err
		}
	}
	cfg, err := pgxpool.ParseConfig(o.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse dsn: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	q := db.New(pool)
	s := &Store{dsn: o.DSN, pool: pool, qw: q, qr: q}
	if err := s.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close implements store.Store.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

func runMigrate(dsn, what string, f func(*migrate.Migrate) error) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("postgres: migrate: parse dsn: %w", err)
	}
	conn := stdlib.OpenDB(*cfg)
	drv, err := migratepgx.WithInstance(conn, &migratepgx.Config{})
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("postgres: migrate: driver: %w", err)
	}
	src, err := iofs.New(migrations, "migrations")
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("postgres: migrate: source: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	err = f(m)
	srcErr, dbErr := m.Close()
	if errors.Is(err, migrate.ErrNoChange) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", what, err)
	}
	return errors.Join(srcErr, dbErr)
}

// MigrateUp applies every pending up-migration.
func MigrateUp(dsn string) error {
	return runMigrate(dsn, "up", func(m *migrate.Migrate) error { return m.Up() })
}

// MigrateDown applies every down-migration, leaving an empty schema.
func MigrateDown(dsn string) error {
	return runMigrate(dsn, "down", func(m *migrate.Migrate) error { return m.Down() })
}

// MigrateTo migrates up or down to version.
func MigrateTo(dsn string, version uint) error {
	return runMigrate(dsn, fmt.Sprintf("to %d", version), func(m *migrate.Migrate) error { return m.Migrate(version) })
}

// tx runs f in a transaction.
func (s *Store) tx(ctx context.Context, f func(q *db.Queries) error) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return f(s.qw.WithTx(tx)) })
	if err != nil && !errors.Is(err, store.ErrUnavailable) && unavailable(err) {
		// Begin or commit lost the server (f's own errors are mapped).
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// retryable reports serialization failures and deadlocks, which PostgreSQL
// resolves by aborting one transaction that may simply run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// retry runs f until it succeeds, fails for a non-retryable reason, or ten
// attempts have aborted.
func (s *Store) retry(ctx context.Context, f func() error) error {
	var err error
	for attempt := range 10 {
		if err = f(); !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(attempt+1) * 2 * time.Millisecond):
		}
	}
	return err
}

// mapErr turns driver errors into store errors, keeping the cause.
func mapErr(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) || errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	if unavailable(err) {
		return fmt.Errorf("%s: %w: %w", what, store.ErrUnavailable, err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return fmt.Errorf("%s: %w: %w", what, store.ErrAlreadyExists, err)
		case "23503": // foreign_key_violation
			return fmt.Errorf("%s: %w: %w", what, store.ErrConflict, err)
		case "23514", "23502", "22P02", "22001": // check, not null, bad text repr, too long
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

// unavailable reports whether err means the server could not be reached
// or went away (down, restarting, crashed, connection lost mid-query), as
// opposed to a problem with the query.
func unavailable(err error) bool {
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &ce), errors.As(err, &ne), pgconn.Timeout(err) && !errors.Is(err, context.Canceled),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return true
	case errors.As(err, &pe):
		// Class 08: connection exception; 57P01–03: shutting down,
		// crashed, not yet accepting connections.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	// pgx reports a connection it closed after an error this way (a
	// closed pool is the store shut down: not a server problem).
	return strings.Contains(err.Error(), "conn closed")
}

// Dialect helpers shared with store.go.

func ts(t time.Time) time.Time { return t.UTC() }

func tsp(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.UTC()
	return &v
}

func tm(t time.Time) time.Time { return t.UTC() }

func tmp(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.UTC()
	return &v
}

func lim(n int) int32 {
	if n > 1<<31-1 {
		return 1<<31 - 1
	}
	return int32(n)
}

func dayv(t time.Time) time.Time { return store.Day(t) }

func dayt(t time.Time) (time.Time, error) { return store.Day(t), nil }

// MigrateDownAll reverts every migration of the open store's database; the
// store is unusable until MigrateUpAll. For tests of the down-migrations.
func (s *Store) MigrateDownAll(_ context.Context) error {
	err := MigrateDown(s.dsn)
	s.pool.Reset() // drop connections whose cached statements name old tables
	return err
}

// MigrateUpAll applies every pending migration of the open store's database.
func (s *Store) MigrateUpAll(_ context.Context) error {
	err := MigrateUp(s.dsn)
	s.pool.Reset()
	return err
}

// Analyze refreshes the planner's statistics (ANALYZE). Autovacuum does this
// on its own schedule; call it after bulk loads so the first queries do not
// plan with stale row counts.
func (s *Store) Analyze(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("postgres: analyze: %w", err)
	}
	return nil
}
