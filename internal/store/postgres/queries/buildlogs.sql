-- name: AppendBuildLog :exec
INSERT INTO build_logs (build_id, seq, created_at, step, stream, data)
VALUES (sqlc.arg(build_id), sqlc.arg(seq), sqlc.arg(created_at), sqlc.arg(step), sqlc.arg(stream), sqlc.arg(data));

-- name: ListBuildLogs :many
SELECT * FROM build_logs
WHERE build_id = sqlc.arg(build_id) AND seq > sqlc.arg(after_seq)
ORDER BY seq
LIMIT sqlc.arg(max_rows);

-- name: TrimBuildLogs :exec
DELETE FROM build_logs WHERE build_id = sqlc.arg(build_id) AND seq < sqlc.arg(before_seq);
