-- name: InsertAuditLog :one
INSERT INTO audit_logs (team_id, actor_type, actor_id, actor_name, resource_type, resource_id,
                        action, status, scope, metadata, created_at)
VALUES (sqlc.arg(team_id), sqlc.arg(actor_type), sqlc.arg(actor_id), sqlc.arg(actor_name),
        sqlc.arg(resource_type), sqlc.arg(resource_id), sqlc.arg(action), sqlc.arg(status),
        sqlc.arg(scope), sqlc.arg(metadata), sqlc.arg(created_at))
RETURNING id;

-- Keyset pages: the row comparison lets the index bound the scan, so a
-- deep page costs the same as the first.

-- name: ListAuditLogs :many
SELECT * FROM audit_logs
WHERE team_id = sqlc.arg(team_id)
  AND (scope = sqlc.arg(scope) OR sqlc.arg(scope) = '')
  AND (actor_id = sqlc.arg(actor_id) OR sqlc.arg(actor_id) = '')
  AND (resource_type = sqlc.arg(resource_type) OR sqlc.arg(resource_type) = '')
  AND (action = sqlc.arg(action) OR sqlc.arg(action) = '')
  AND created_at >= sqlc.arg(from_ts) AND created_at < sqlc.arg(to_ts)
  AND (created_at, id) < (sqlc.arg(cursor_ts), CAST(sqlc.arg(cursor_id) AS BIGINT))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: ListAllAuditLogs :many
SELECT * FROM audit_logs
WHERE (scope = sqlc.arg(scope) OR sqlc.arg(scope) = '')
  AND (actor_id = sqlc.arg(actor_id) OR sqlc.arg(actor_id) = '')
  AND (resource_type = sqlc.arg(resource_type) OR sqlc.arg(resource_type) = '')
  AND (action = sqlc.arg(action) OR sqlc.arg(action) = '')
  AND created_at >= sqlc.arg(from_ts) AND created_at < sqlc.arg(to_ts)
  AND (created_at, id) < (sqlc.arg(cursor_ts), CAST(sqlc.arg(cursor_id) AS BIGINT))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: AnonymizeUserAuditLogs :execrows
UPDATE audit_logs SET actor_id = '', actor_name = 'deleted user'
WHERE actor_type = 'user' AND actor_id = sqlc.arg(user_id);

-- name: InsertMetricSnapshot :exec
INSERT INTO capsule_metric_snapshots (capsule_id, team_id, ts, interval_ms, cpu_cores, mem_bytes)
VALUES (sqlc.arg(capsule_id), sqlc.arg(team_id), sqlc.arg(ts), sqlc.arg(interval_ms), sqlc.arg(cpu_cores), sqlc.arg(mem_bytes));

-- name: ListCapsuleMetricSnapshots :many
SELECT * FROM capsule_metric_snapshots
WHERE team_id = sqlc.arg(team_id) AND capsule_id = sqlc.arg(capsule_id)
  AND ts >= sqlc.arg(from_ts) AND ts < sqlc.arg(to_ts)
ORDER BY ts, id;

-- name: ListTeamMetricSnapshots :many
SELECT * FROM capsule_metric_snapshots
WHERE team_id = sqlc.arg(team_id) AND ts >= sqlc.arg(from_ts) AND ts < sqlc.arg(to_ts)
ORDER BY ts, id;

-- name: ListTeamsWithMetricSnapshots :many
SELECT DISTINCT team_id FROM capsule_metric_snapshots
WHERE ts >= sqlc.arg(from_ts) AND ts < sqlc.arg(to_ts)
ORDER BY team_id;

-- name: DeleteMetricSnapshotsBefore :execrows
DELETE FROM capsule_metric_snapshots WHERE ts < sqlc.arg(before);

-- name: UpsertDailyUsage :exec
INSERT INTO daily_usage (team_id, day, cpu_minutes, ram_mb_minutes, updated_at)
VALUES (sqlc.arg(team_id), sqlc.arg(day), sqlc.arg(cpu_minutes), sqlc.arg(ram_mb_minutes), sqlc.arg(updated_at))
ON CONFLICT (team_id, day) DO UPDATE
SET cpu_minutes = excluded.cpu_minutes, ram_mb_minutes = excluded.ram_mb_minutes, updated_at = excluded.updated_at;

-- name: ListDailyUsage :many
SELECT * FROM daily_usage
WHERE team_id = sqlc.arg(team_id) AND day >= sqlc.arg(from_day) AND day <= sqlc.arg(to_day)
ORDER BY day;
