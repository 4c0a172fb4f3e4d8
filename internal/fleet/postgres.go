package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a private PostgreSQL server (Debian's binaries, a data
// directory of its own, loopback only) that a chaos test may kill -9 and
// restart without touching the PostgreSQL other tests share.
type Postgres struct {
	Dir  string
	Port int
	// DSN is the superuser's (may CREATE DATABASE).
	DSN string

	bin   string
	spawn *spawner
	proc  *proc
}

// StartPostgres makes a cluster in dir (owned by the postgres user) and
// starts it.
func StartPostgres(ctx context.Context, dir string) (*Postgres, error) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		return nil, errors.New("fleet: no PostgreSQL server in /usr/lib/postgresql (apt-get install postgresql)")
	}
	sort.Strings(bins)
	p := &Postgres{Dir: filepath.Join(dir, "pgdata"), bin: filepath.Dir(bins[len(bins)-1]), spawn: newSpawner()}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, err
	}
	// The postgres user must reach the data directory (search permission
	// on every directory above it).
	for d := p.Dir; d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			_ = os.Chmod(d, fi.Mode().Perm()|0o001)
		}
	}
	if err := os.Chown(p.Dir, uid, gid); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := splitHostPort(addr)
	p.Port = port
	p.DSN = fmt.Sprintf("postgres://wrenn@127.0.0.1:%d/postgres?sslmode=disable", port)
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		filepath.Join(p.bin, "initdb"), "-D", p.Dir, "-U", "wrenn", "--auth=trust", "-E", "UTF8", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fleet: initdb: %w: %s", err, out)
	}
	if err := p.Start(ctx); err != nil {
		p.spawn.close()
		return nil, err
	}
	return p, nil
}

// Start (re)starts the server and waits until it answers.
func (p *Postgres) Start(ctx context.Context) error {
	pr, err := p.spawn.start(ctx, "setpriv", []string{
		"--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		filepath.Join(p.bin, "postgres"), "-D", p.Dir, "-p", strconv.Itoa(p.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + p.Dir,
		"-c", "fsync=on", "-c", "max_connections=200",
	}, nil, filepath.Join(filepath.Dir(p.Dir), "postgres.log"))
	if err != nil {
		return fmt.Errorf("fleet: start postgres: %w", err)
	}
	p.proc = pr
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, p.DSN)
		cancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		select {
		case <-pr.exited:
			return fmt.Errorf("fleet: postgres exited: %s", pr.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fleet: postgres not ready within 30 s: %w", err)
		}
	}
}

// Kill kills the server with SIGKILL (a crash: it recovers from its WAL on
// the next Start).
func (p *Postgres) Kill() { p.proc.kill() }

// Stop stops the server and removes its data.
func (p *Postgres) Stop() {
	if p.proc != nil {
		p.proc.stop(10 * time.Second)
	}
	p.spawn.close()
	_ = os.RemoveAll(p.Dir)
}
