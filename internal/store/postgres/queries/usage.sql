-- name: SumUsage :many
-- Per team: CPU minutes (cores x minutes) and RAM MB-minutes over [from, to).
SELECT team_id,
       CAST(SUM(cpu_cores * interval_ms) / 60000.0 AS DOUBLE PRECISION) AS cpu_minutes,
       CAST(SUM(CAST(mem_bytes AS DOUBLE PRECISION) * interval_ms) / (1048576.0 * 60000.0) AS DOUBLE PRECISION) AS ram_mb_minutes
FROM capsule_metric_snapshots
WHERE (team_id = sqlc.arg(team_id) OR sqlc.arg(team_id) = '')
  AND ts >= sqlc.arg(from_ts) AND ts < sqlc.arg(to_ts)
GROUP BY team_id
ORDER BY team_id;
