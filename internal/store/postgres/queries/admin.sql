-- The statements below may remove a platform admin. Each is ONE statement
-- that applies only when another active admin remains. Under READ COMMITTED a
-- plain count subquery could race (two revokes each see the other admin), so
-- the CTE first locks every active admin row in id order: a concurrent revoke
-- waits, then re-checks the rows it locked against the committed state.

-- name: RevokeUserAdmin :execrows
WITH admins AS MATERIALIZED (
    SELECT id FROM users
    WHERE is_admin = TRUE AND status = 'active' AND deleted_at IS NULL
    ORDER BY id
    FOR UPDATE
)
UPDATE users SET is_admin = FALSE, updated_at = sqlc.arg(updated_at)
WHERE users.id = sqlc.arg(id) AND users.is_admin = TRUE
  AND (SELECT count(*) FROM admins WHERE admins.id <> sqlc.arg(id)) > 0;

-- name: DeactivateUser :execrows
WITH admins AS MATERIALIZED (
    SELECT id FROM users
    WHERE is_admin = TRUE AND status = 'active' AND deleted_at IS NULL
    ORDER BY id
    FOR UPDATE
)
UPDATE users SET status = 'inactive', updated_at = sqlc.arg(updated_at)
WHERE users.id = sqlc.arg(id) AND users.deleted_at IS NULL
  AND (users.is_admin = FALSE OR users.status <> 'active'
       OR (SELECT count(*) FROM admins WHERE admins.id <> sqlc.arg(id)) > 0);

-- name: SoftDeleteUser :execrows
WITH admins AS MATERIALIZED (
    SELECT id FROM users
    WHERE is_admin = TRUE AND status = 'active' AND deleted_at IS NULL
    ORDER BY id
    FOR UPDATE
)
UPDATE users
SET deleted_at = sqlc.arg(now), updated_at = sqlc.arg(now), status = 'inactive', is_admin = FALSE,
    email = sqlc.arg(tombstone_email), name = 'deleted user', password_hash = NULL
WHERE users.id = sqlc.arg(id) AND users.deleted_at IS NULL
  AND (users.is_admin = FALSE OR users.status <> 'active'
       OR (SELECT count(*) FROM admins WHERE admins.id <> sqlc.arg(id)) > 0);
