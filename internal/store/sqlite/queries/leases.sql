-- name: TryLease :many
-- Takes or renews the lease in one statement (atomic under concurrent
-- replicas): inserted when absent, updated when holder already holds it
-- or when it expired before the caller's now (renewed_at); returns a row
-- only then.
INSERT INTO leases (name, holder, renewed_at, expires_at)
VALUES (sqlc.arg(name), sqlc.arg(holder), sqlc.arg(now), sqlc.arg(expires_at))
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder OR leases.expires_at < excluded.renewed_at
RETURNING holder;

-- name: ReleaseLease :exec
DELETE FROM leases WHERE name = sqlc.arg(name) AND holder = sqlc.arg(holder);
