#!/usr/bin/env bash
# Ensures a local PostgreSQL (Debian's `postgresql` package) is running and has
# a login role and database `wrenn_test` for the store tests, then prints the
# DSN on stdout. Idempotent; needs root. Use it as:
#   export WRENN_TEST_POSTGRES_DSN=$(scripts/postgres.sh)
# The role may CREATE DATABASE: each test run creates its own random database
# and drops it when done, so parallel runs do not collide.
set -euo pipefail

# Only the DSN may reach stdout: callers capture it with $(...). Everything
# else (including chatter from pg_ctlcluster, apt, psql such as "Removed stale
# pid file.") goes to stderr.
exec 3>&1 1>&2

role=wrenn_test
password=wrenn_test
port=${WRENN_TEST_POSTGRES_PORT:-5432}

log() { echo "postgres.sh: $*" >&2; }

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    log "PostgreSQL is not installed; run as root (apt-get install -y postgresql)"
    exit 1
  fi
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# Pick the newest cluster; create one if the package left none.
read -r ver cluster < <(pg_lsclusters -h | sort -k1,1n | tail -n1 | awk '{print $1, $2}') || true
if [[ -z ${ver:-} ]]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -n1)
  cluster=main
  log "creating cluster $ver/$cluster"
  pg_createcluster "$ver" "$cluster" --port "$port" >/dev/null 3>&-
fi
port=$(pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $3}')

status=$(pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $4}')
if [[ $status != online ]]; then
  log "starting cluster $ver/$cluster on port $port"
  pg_ctlcluster "$ver" "$cluster" start 3>&-
fi

psql_admin() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtAX "$@"; }

for _ in $(seq 1 50); do
  psql_admin -c 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done

if [[ $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'") != 1 ]]; then
  log "creating role $role"
  psql_admin -c "CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password'"
fi
if [[ $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$role'") != 1 ]]; then
  log "creating database $role"
  psql_admin -c "CREATE DATABASE $role OWNER $role"
fi

echo "postgres://$role:$password@127.0.0.1:$port/$role?sslmode=disable" >&3
