-- name: CreateHostToken :exec
INSERT INTO host_tokens (token_hash, team_id, created_by, created_at, expires_at)
VALUES (sqlc.arg(token_hash), sqlc.narg(team_id), sqlc.narg(created_by), sqlc.arg(created_at), sqlc.arg(expires_at));

-- name: ConsumeHostToken :one
UPDATE host_tokens SET used_at = sqlc.arg(now), host_id = sqlc.arg(host_id)
WHERE token_hash = sqlc.arg(token_hash) AND used_at IS NULL AND expires_at > sqlc.arg(now)
RETURNING *;

-- name: InsertHost :one
INSERT INTO hosts (id, team_id, address, status, credential_hash, vcpus, memory_mb, disk_mb,
                   last_heartbeat_at, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.narg(team_id), sqlc.arg(address), 'online', sqlc.arg(credential_hash),
        sqlc.arg(vcpus), sqlc.arg(memory_mb), sqlc.arg(disk_mb), sqlc.arg(created_at), sqlc.arg(created_at), sqlc.arg(created_at))
RETURNING *;

-- name: GetHost :one
SELECT * FROM hosts WHERE id = sqlc.arg(id);

-- name: GetHostByCredentialHash :one
SELECT * FROM hosts WHERE credential_hash = sqlc.arg(credential_hash);

-- name: ListHosts :many
SELECT * FROM hosts ORDER BY created_at, id;

-- name: ListOnlineSharedHosts :many
SELECT * FROM hosts WHERE status = 'online' AND drain = '' AND team_id IS NULL ORDER BY id;

-- name: ListOnlineTeamHosts :many
SELECT * FROM hosts WHERE status = 'online' AND drain = '' AND team_id = sqlc.arg(team_id) ORDER BY id;

-- name: HostHeartbeat :one
UPDATE hosts
SET used_vcpus = sqlc.arg(used_vcpus), used_memory_mb = sqlc.arg(used_memory_mb), used_disk_mb = sqlc.arg(used_disk_mb),
    vcpus = sqlc.arg(vcpus), memory_mb = sqlc.arg(memory_mb), disk_mb = sqlc.arg(disk_mb),
    address = sqlc.arg(address),
    cpu_overcommit = sqlc.arg(cpu_overcommit), memory_overcommit = sqlc.arg(memory_overcommit),
    disk_overcommit = sqlc.arg(disk_overcommit), capabilities = sqlc.arg(capabilities),
    last_heartbeat_at = sqlc.arg(now), updated_at = sqlc.arg(now),
    status = CASE WHEN status = 'unavailable' THEN 'online' ELSE status END
WHERE id = sqlc.arg(id)
RETURNING *;

-- name: MarkStaleHostsUnavailable :many
UPDATE hosts SET status = 'unavailable', updated_at = sqlc.arg(now)
WHERE status <> 'unavailable' AND last_heartbeat_at < sqlc.arg(stale_before)
RETURNING id;

-- name: SetHostCapabilities :execrows
UPDATE hosts
SET cpu_overcommit = sqlc.arg(cpu_overcommit), memory_overcommit = sqlc.arg(memory_overcommit),
    disk_overcommit = sqlc.arg(disk_overcommit), capabilities = sqlc.arg(capabilities), updated_at = sqlc.arg(now)
WHERE id = sqlc.arg(id);

-- name: SetHostStatus :execrows
UPDATE hosts SET status = sqlc.arg(status), updated_at = sqlc.arg(now) WHERE id = sqlc.arg(id);

-- name: DeleteHost :execrows
DELETE FROM hosts WHERE id = sqlc.arg(id);

-- name: CreateTemplate :one
INSERT INTO templates (id, team_id, name, public, size_bytes, host_id, checksum, memory, source_capsule_id, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(name), sqlc.arg(public), sqlc.arg(size_bytes), sqlc.narg(host_id), sqlc.narg(checksum), sqlc.arg(memory), sqlc.narg(source_capsule_id), sqlc.arg(created_at), sqlc.arg(created_at))
RETURNING *;

-- name: GetTemplate :one
SELECT * FROM templates WHERE id = sqlc.arg(id) AND (team_id = sqlc.arg(team_id) OR public = TRUE);

-- name: GetTemplateByName :one
SELECT * FROM templates
WHERE name = sqlc.arg(name) AND (team_id = sqlc.arg(team_id) OR public = TRUE)
ORDER BY public, id -- the team's own (private) template first
LIMIT 1;

-- name: ListTemplates :many
SELECT * FROM templates WHERE team_id = sqlc.arg(team_id) OR public = TRUE ORDER BY name, id;

-- name: ListAllTemplates :many
SELECT * FROM templates ORDER BY team_id, name;

-- name: UpdateTemplateSize :execrows
UPDATE templates SET size_bytes = sqlc.arg(size_bytes), updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetTemplateCapsuleInternet :execrows
UPDATE templates SET capsule_internet = sqlc.narg(capsule_internet), updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetTemplateIsolation :execrows
UPDATE templates SET isolation = sqlc.narg(isolation), updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: DeleteTemplate :execrows
DELETE FROM templates WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: CreateBuild :one
INSERT INTO builds (id, team_id, template_name, template_id, status, spec, created_by, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(template_name), sqlc.narg(template_id), 'pending',
        sqlc.arg(spec), sqlc.narg(created_by), sqlc.arg(created_at), sqlc.arg(created_at))
RETURNING *;

-- name: GetBuild :one
SELECT * FROM builds WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: ListBuilds :many
SELECT * FROM builds WHERE team_id = sqlc.arg(team_id) ORDER BY created_at DESC, id DESC;

-- name: ListAllBuilds :many
SELECT * FROM builds ORDER BY created_at DESC, id DESC;

-- name: UpdateBuildStatus :execrows
UPDATE builds
SET status = sqlc.arg(to_status), error = sqlc.arg(error), template_id = COALESCE(sqlc.narg(template_id), template_id),
    updated_at = sqlc.arg(now), finished_at = sqlc.narg(finished_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id) AND status = sqlc.arg(from_status);

-- name: TouchBuild :execrows
UPDATE builds SET updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id) AND status = 'running';

-- name: CreateCapsule :one
INSERT INTO capsules (id, team_id, template_id, host_id, status, vcpus, memory_mb, disk_size_mb, timeout_sec,
                      expires_at, env, public, access_token_hash, created_by, created_at, updated_at, allow_internet, metadata, network, isolation,
                      on_timeout, auto_resume)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(template_id), sqlc.narg(host_id), sqlc.arg(status),
        sqlc.arg(vcpus), sqlc.arg(memory_mb), sqlc.arg(disk_size_mb), sqlc.arg(timeout_sec),
        sqlc.narg(expires_at), sqlc.arg(env), sqlc.arg(public), sqlc.arg(access_token_hash),
        sqlc.narg(created_by), sqlc.arg(created_at), sqlc.arg(created_at), sqlc.arg(allow_internet), sqlc.arg(metadata), sqlc.narg(network),
        sqlc.arg(isolation), sqlc.arg(on_timeout), sqlc.arg(auto_resume))
RETURNING *;

-- name: GetCapsule :one
SELECT * FROM capsules WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: GetCapsuleUnscoped :one
SELECT * FROM capsules WHERE id = sqlc.arg(id);

-- name: ListCapsules :many
SELECT * FROM capsules
WHERE team_id = sqlc.arg(team_id)
  AND (status = sqlc.arg(status) OR sqlc.arg(status) = '')
  AND (created_at, id) < (sqlc.arg(cursor_ts), CAST(sqlc.arg(cursor_id) AS TEXT))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: ListAllCapsules :many
SELECT * FROM capsules
WHERE (status = sqlc.arg(status) OR sqlc.arg(status) = '')
  AND (created_at, id) < (sqlc.arg(cursor_ts), CAST(sqlc.arg(cursor_id) AS TEXT))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: ListCapsulesByHost :many
SELECT * FROM capsules WHERE host_id = sqlc.arg(host_id) ORDER BY id;

-- name: ListExpiredCapsules :many
SELECT * FROM capsules
WHERE expires_at <= sqlc.arg(now) AND status IN ('pending', 'starting', 'running')
ORDER BY expires_at, id
LIMIT sqlc.arg(lim);

-- name: CountCapsulesByStatus :many
SELECT status, count(*) AS n FROM capsules GROUP BY status ORDER BY status;

-- name: UpdateCapsuleStatus :execrows
UPDATE capsules
SET status = sqlc.arg(to_status), updated_at = sqlc.arg(now), error_reason = sqlc.arg(error_reason),
    paused_at = CASE WHEN CAST(sqlc.arg(keep_paused_at) AS BOOLEAN) THEN paused_at ELSE sqlc.narg(paused_at) END
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id) AND status = sqlc.arg(from_status);

-- name: SetCapsuleHost :execrows
UPDATE capsules SET host_id = sqlc.narg(host_id), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetCapsuleExpiry :execrows
UPDATE capsules SET expires_at = sqlc.narg(expires_at), timeout_sec = sqlc.arg(timeout_sec), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetCapsulePublic :execrows
UPDATE capsules SET public = sqlc.arg(public), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetCapsuleNetwork :execrows
UPDATE capsules SET allow_internet = sqlc.arg(allow_internet), network = sqlc.narg(network), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: DeleteCapsule :execrows
DELETE FROM capsules WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: ListPlacementsSinceHeartbeat :many
-- Capsules placed on online hosts after the host's last heartbeat (which
-- therefore does not count them yet), by any control-plane replica: the
-- scheduler adds them to the host's used figures.
SELECT c.host_id, c.id, c.vcpus, c.memory_mb, c.disk_size_mb
FROM capsules c JOIN hosts h ON h.id = c.host_id
WHERE h.status = 'online'
  AND c.created_at > COALESCE(h.last_heartbeat_at, 0)
  AND c.status IN ('pending', 'starting', 'running', 'paused')
ORDER BY c.host_id, c.id;
-- name: SetCapsuleLifecycle :execrows
UPDATE capsules SET on_timeout = sqlc.arg(on_timeout), auto_resume = sqlc.arg(auto_resume), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetCapsulePauseReason :execrows
UPDATE capsules SET pause_reason = sqlc.arg(pause_reason), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: ListTimedOutPausable :many
SELECT * FROM capsules
WHERE on_timeout = 'pause' AND status = 'running' AND expires_at <= sqlc.arg(now)
ORDER BY expires_at, id
LIMIT sqlc.arg(lim);

-- name: ListRetentionExpired :many
SELECT * FROM capsules
WHERE pause_reason = 'timeout' AND status IN ('paused', 'hibernated') AND paused_at <= sqlc.arg(before)
ORDER BY paused_at, id
LIMIT sqlc.arg(lim);

-- name: SetTemplateLifecycle :execrows
UPDATE templates SET on_timeout = sqlc.narg(on_timeout), auto_resume = sqlc.narg(auto_resume), updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetTeamLifecycle :execrows
UPDATE teams SET on_timeout = sqlc.narg(on_timeout), auto_resume = sqlc.narg(auto_resume), updated_at = sqlc.arg(updated_at)
WHERE id = sqlc.arg(id);

-- Capsule moves and host drains (migration 18).

-- name: SetCapsuleMoveRecord :execrows
UPDATE capsules SET move_record = sqlc.arg(move_record)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: MoveCapsuleHost :execrows
-- Re-homes a capsule that is still on from_host in status: the one
-- statement that decides which of two racing moves wins.
UPDATE capsules SET host_id = sqlc.arg(to_host), updated_at = sqlc.arg(now)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id)
  AND host_id = sqlc.arg(from_host) AND status = sqlc.arg(status);

-- name: SetHostDrain :execrows
UPDATE hosts SET drain = sqlc.arg(drain), drain_report = sqlc.arg(drain_report), updated_at = sqlc.arg(now)
WHERE id = sqlc.arg(id);
