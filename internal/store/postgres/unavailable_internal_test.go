package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestUnreachableIsUnavailable: a server that cannot be reached is
// store.ErrUnavailable (the API's 503), not an internal error; a query
// problem is not.
func TestUnreachableIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, "postgres://nobody@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("connected to port 1")
	}
	if got := mapErr(err, "q"); !errors.Is(got, store.ErrUnavailable) {
		t.Fatalf("mapErr(%v) = %v, want ErrUnavailable", err, got)
	}
	for _, code := range []string{"08006", "57P01", "57P03"} {
		if got := mapErr(&pgconn.PgError{Code: code}, "q"); !errors.Is(got, store.ErrUnavailable) {
			t.Errorf("SQLSTATE %s: %v, want ErrUnavailable", code, got)
		}
	}
	if got := mapErr(&pgconn.PgError{Code: "42601"}, "q"); errors.Is(got, store.ErrUnavailable) {
		t.Errorf("a syntax error is not unavailability: %v", got)
	}
}
