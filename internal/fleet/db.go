package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5"
)

// createDatabase makes a fresh database named prefix_<random> with the
// admin DSN and returns its name and DSN.
func createDatabase(ctx context.Context, adminDSN, prefix string) (name, dsn string, err error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name = prefix + "_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return "", "", fmt.Errorf("fleet: postgres: %w", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", "", fmt.Errorf("fleet: create database: %w", err)
	}
	u, err := url.Parse(adminDSN)
	if err != nil {
		return "", "", fmt.Errorf("fleet: postgres DSN: %w", err)
	}
	u.Path = "/" + name
	return name, u.String(), nil
}

func dropDatabase(ctx context.Context, adminDSN, name string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("fleet: postgres: %w", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("fleet: drop database: %w", err)
	}
	return nil
}
