-- The statements below may remove a platform admin. Each is ONE statement
-- that applies only when another active admin remains; SQLite runs writers
-- one at a time (a single writer connection plus the database write lock),
-- so the count cannot change between the check and the update.

-- name: RevokeUserAdmin :execrows
UPDATE users SET is_admin = FALSE, updated_at = sqlc.arg(updated_at)
WHERE users.id = sqlc.arg(id) AND users.is_admin = TRUE
  AND (SELECT count(*) FROM users o
       WHERE o.is_admin = TRUE AND o.status = 'active' AND o.deleted_at IS NULL AND o.id <> sqlc.arg(id)) > 0;

-- name: DeactivateUser :execrows
UPDATE users SET status = 'inactive', updated_at = sqlc.arg(updated_at)
WHERE users.id = sqlc.arg(id) AND users.deleted_at IS NULL
  AND (users.is_admin = FALSE OR users.status <> 'active'
       OR (SELECT count(*) FROM users o
           WHERE o.is_admin = TRUE AND o.status = 'active' AND o.deleted_at IS NULL AND o.id <> sqlc.arg(id)) > 0);

-- name: SoftDeleteUser :execrows
UPDATE users
SET deleted_at = sqlc.arg(now), updated_at = sqlc.arg(now), status = 'inactive', is_admin = FALSE,
    email = sqlc.arg(tombstone_email), name = 'deleted user', password_hash = NULL
WHERE users.id = sqlc.arg(id) AND users.deleted_at IS NULL
  AND (users.is_admin = FALSE OR users.status <> 'active'
       OR (SELECT count(*) FROM users o
           WHERE o.is_admin = TRUE AND o.status = 'active' AND o.deleted_at IS NULL AND o.id <> sqlc.arg(id)) > 0);
