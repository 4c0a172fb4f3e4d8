-- name: CreateTeam :one
INSERT INTO teams (id, name, is_byoc, is_platform, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.arg(name), sqlc.arg(is_byoc), FALSE, sqlc.arg(created_at), sqlc.arg(created_at))
RETURNING *;

-- name: GetTeam :one
SELECT * FROM teams WHERE id = sqlc.arg(id);

-- name: GetPlatformTeam :one
SELECT * FROM teams WHERE is_platform = TRUE;

-- name: ListTeams :many
SELECT * FROM teams ORDER BY created_at, id;

-- name: ListTeamsForUser :many
SELECT t.id, t.name, t.is_byoc, t.is_platform, t.created_at, t.updated_at, t.capsule_internet, t.default_isolation, t.on_timeout, t.auto_resume, m.role
FROM teams t JOIN team_members m ON m.team_id = t.id
WHERE m.user_id = sqlc.arg(user_id)
ORDER BY t.created_at, t.id;

-- name: RenameTeam :execrows
UPDATE teams SET name = sqlc.arg(name), updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);

-- name: SetTeamBYOC :execrows
UPDATE teams SET is_byoc = sqlc.arg(is_byoc), updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);

-- name: SetTeamCapsuleInternet :execrows
UPDATE teams SET capsule_internet = sqlc.narg(capsule_internet), updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);

-- name: SetTeamPrivateRanges :execrows
UPDATE teams SET allowed_private_ranges = sqlc.narg(allowed_private_ranges), updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);

-- name: SetTeamDefaultIsolation :execrows
UPDATE teams SET default_isolation = sqlc.narg(default_isolation), updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);

-- name: DeleteTeam :execrows
DELETE FROM teams WHERE id = sqlc.arg(id) AND is_platform = FALSE;

-- name: AddTeamMember :one
INSERT INTO team_members (team_id, user_id, role, created_at)
VALUES (sqlc.arg(team_id), sqlc.arg(user_id), sqlc.arg(role), sqlc.arg(created_at))
RETURNING *;

-- name: GetTeamMember :one
SELECT * FROM team_members WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: ListTeamMembers :many
SELECT m.team_id, m.user_id, m.role, m.created_at, u.email, u.name
FROM team_members m JOIN users u ON u.id = m.user_id
WHERE m.team_id = sqlc.arg(team_id)
ORDER BY m.created_at, m.user_id;

-- name: UpdateTeamMemberRole :execrows
UPDATE team_members SET role = sqlc.arg(role) WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: RemoveTeamMember :execrows
DELETE FROM team_members WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: CreateTeamInvite :one
INSERT INTO team_invites (id, team_id, email, role, token_hash, invited_by, created_at, expires_at)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(email), sqlc.arg(role), sqlc.arg(token_hash),
        sqlc.narg(invited_by), sqlc.arg(created_at), sqlc.arg(expires_at))
RETURNING *;

-- name: ListTeamInvites :many
SELECT * FROM team_invites
WHERE team_id = sqlc.arg(team_id) AND accepted_at IS NULL
ORDER BY created_at, id;

-- name: ListInvitesForEmail :many
SELECT * FROM team_invites
WHERE email = sqlc.arg(email) AND accepted_at IS NULL AND expires_at > sqlc.arg(now)
ORDER BY created_at, id;

-- name: GetTeamInviteByTokenHash :one
SELECT * FROM team_invites WHERE token_hash = sqlc.arg(token_hash);

-- name: GetTeamInvite :one
SELECT * FROM team_invites WHERE id = sqlc.arg(id);

-- name: MarkTeamInviteAccepted :execrows
UPDATE team_invites SET accepted_at = sqlc.arg(now)
WHERE id = sqlc.arg(id) AND accepted_at IS NULL AND expires_at > sqlc.arg(now);

-- name: DeleteTeamInvite :execrows
DELETE FROM team_invites WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);
