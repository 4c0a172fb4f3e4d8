-- Volumes and their mounts (migration 17, docs/VOLUMES.md).

-- name: InsertVolume :exec
INSERT INTO volumes (id, team_id, name, size_mb, created_at, updated_at, version, snapshot_name)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(name), sqlc.arg(size_mb), sqlc.arg(created_at),
        sqlc.arg(updated_at), 0, sqlc.arg(snapshot_name));

-- name: GetVolumeByName :one
SELECT * FROM volumes WHERE team_id = sqlc.arg(team_id) AND name = sqlc.arg(name);

-- name: ListVolumes :many
SELECT * FROM volumes WHERE team_id = sqlc.arg(team_id) ORDER BY name;

-- name: LockVolume :one
-- Locks the row (PostgreSQL; SQLite serialises writers) so mount checks
-- and deletes of one volume run one at a time.
SELECT * FROM volumes WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: ActiveVolumeMounts :many
-- The mounts that hold a volume: those of capsules not stopped.
SELECT m.capsule_id, m.volume_id, m.path, m.read_only, m.created_at,
       CAST(COALESCE(c.host_id, '') AS TEXT) AS host_id, c.status
FROM volume_mounts m JOIN capsules c ON c.id = m.capsule_id
WHERE m.volume_id = sqlc.arg(volume_id) AND c.status <> 'stopped'
ORDER BY m.created_at, m.capsule_id;

-- name: CapsuleHost :one
SELECT CAST(COALESCE(host_id, '') AS TEXT) AS host_id FROM capsules WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: InsertVolumeMount :exec
INSERT INTO volume_mounts (capsule_id, volume_id, path, read_only, created_at)
VALUES (sqlc.arg(capsule_id), sqlc.arg(volume_id), sqlc.arg(path), sqlc.arg(read_only), sqlc.arg(created_at));

-- name: DeleteCapsuleVolumeMounts :exec
DELETE FROM volume_mounts WHERE capsule_id = sqlc.arg(capsule_id);

-- name: DeleteVolumeMounts :exec
DELETE FROM volume_mounts WHERE volume_id = sqlc.arg(volume_id);

-- name: ListCapsuleVolumeMounts :many
SELECT m.capsule_id, m.volume_id, m.path, m.read_only, m.created_at, v.name, v.size_mb, v.snapshot_name
FROM volume_mounts m JOIN volumes v ON v.id = m.volume_id
WHERE m.capsule_id = sqlc.arg(capsule_id)
ORDER BY m.path;

-- name: DeleteVolume :execrows
DELETE FROM volumes WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: BumpVolumeVersion :exec
UPDATE volumes SET version = version + 1, updated_at = sqlc.arg(updated_at) WHERE id = sqlc.arg(id);
