-- name: CreateUser :one
INSERT INTO users (id, email, name, password_hash, email_verified, is_admin, status, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.arg(email), sqlc.arg(name), sqlc.narg(password_hash), sqlc.arg(email_verified),
        sqlc.arg(is_admin), 'active', sqlc.arg(created_at), sqlc.arg(created_at))
RETURNING *;

-- name: GetUser :one
SELECT * FROM users WHERE id = sqlc.arg(id) AND deleted_at IS NULL;

-- name: GetUserByEmail :one
SELECT * FROM users WHERE email = sqlc.arg(email) AND deleted_at IS NULL;

-- name: ListUsers :many
SELECT * FROM users
WHERE deleted_at IS NULL
  AND (lower(email) LIKE sqlc.arg(pattern) OR lower(name) LIKE sqlc.arg(pattern))
ORDER BY created_at, id
LIMIT sqlc.arg(lim) OFFSET sqlc.arg(off);

-- name: SetUserName :execrows
UPDATE users SET name = sqlc.arg(name), updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id) AND deleted_at IS NULL;

-- name: SetUserPassword :execrows
UPDATE users SET password_hash = sqlc.arg(password_hash), updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id) AND deleted_at IS NULL;

-- name: SetUserEmailVerified :execrows
UPDATE users SET email_verified = sqlc.arg(email_verified), updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id) AND deleted_at IS NULL;

-- name: ActivateUser :execrows
UPDATE users SET status = 'active', updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id) AND deleted_at IS NULL;

-- name: GrantUserAdmin :execrows
UPDATE users SET is_admin = TRUE, updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id) AND deleted_at IS NULL AND is_admin = FALSE;

-- name: CountActiveAdmins :one
SELECT count(*) FROM users WHERE is_admin = TRUE AND status = 'active' AND deleted_at IS NULL;

-- name: RemoveUserMemberships :exec
DELETE FROM team_members WHERE user_id = sqlc.arg(user_id);

-- name: RemoveUserOAuthLinks :exec
DELETE FROM oauth_providers WHERE user_id = sqlc.arg(user_id);

-- name: CreateUserToken :exec
INSERT INTO user_tokens (token_hash, user_id, kind, created_at, expires_at)
VALUES (sqlc.arg(token_hash), sqlc.arg(user_id), sqlc.arg(kind), sqlc.arg(created_at), sqlc.arg(expires_at));

-- name: ConsumeUserToken :one
DELETE FROM user_tokens
WHERE token_hash = sqlc.arg(token_hash) AND kind = sqlc.arg(kind) AND expires_at > sqlc.arg(now)
RETURNING *;

-- name: DeleteUserTokens :exec
DELETE FROM user_tokens WHERE user_id = sqlc.arg(user_id) AND kind = sqlc.arg(kind);

-- name: DeleteAllUserTokens :exec
DELETE FROM user_tokens WHERE user_id = sqlc.arg(user_id);

-- name: CreateAPIKey :one
INSERT INTO api_keys (id, team_id, name, prefix, key_hash, created_by, created_at)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(name), sqlc.arg(prefix), sqlc.arg(key_hash),
        sqlc.narg(created_by), sqlc.arg(created_at))
RETURNING *;

-- name: ListAPIKeys :many
SELECT * FROM api_keys WHERE team_id = sqlc.arg(team_id) ORDER BY created_at, id;

-- name: DeleteAPIKey :execrows
DELETE FROM api_keys WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: GetAPIKeyByHash :one
SELECT * FROM api_keys WHERE key_hash = sqlc.arg(key_hash);

-- name: TouchAPIKey :execrows
UPDATE api_keys SET last_used_at = sqlc.arg(now)
WHERE id = sqlc.arg(id) AND (last_used_at IS NULL OR last_used_at < sqlc.arg(stale_before));

-- name: LinkOAuth :one
INSERT INTO oauth_providers (provider, provider_user_id, user_id, email, created_at)
VALUES (sqlc.arg(provider), sqlc.arg(provider_user_id), sqlc.arg(user_id), sqlc.arg(email), sqlc.arg(created_at))
RETURNING *;

-- name: GetOAuthLink :one
SELECT * FROM oauth_providers WHERE provider = sqlc.arg(provider) AND provider_user_id = sqlc.arg(provider_user_id);

-- name: ListOAuthLinks :many
SELECT * FROM oauth_providers WHERE user_id = sqlc.arg(user_id) ORDER BY provider;

-- name: UnlinkOAuth :execrows
DELETE FROM oauth_providers WHERE user_id = sqlc.arg(user_id) AND provider = sqlc.arg(provider);
