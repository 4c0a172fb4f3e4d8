-- Events, webhooks and the webhook outbox (migration 15).

-- name: InsertEvent :one
INSERT INTO events (team_id, type, subject, created_at, data)
VALUES (sqlc.arg(team_id), sqlc.arg(type), sqlc.arg(subject), sqlc.arg(created_at), sqlc.arg(data))
RETURNING id;

-- name: ListTeamEvents :many
SELECT * FROM events
WHERE team_id = sqlc.arg(team_id)
  AND id > sqlc.arg(after_id)
  AND (type = sqlc.arg(type) OR sqlc.arg(type) = '')
  AND (subject = sqlc.arg(subject) OR sqlc.arg(subject) = '')
ORDER BY id
LIMIT sqlc.arg(lim);

-- name: ListAllEventsAfter :many
SELECT * FROM events WHERE id > sqlc.arg(after_id) ORDER BY id LIMIT sqlc.arg(lim);

-- name: LastEventID :one
SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM events;

-- name: DeleteEventsBefore :execrows
DELETE FROM events WHERE created_at < sqlc.arg(before);

-- name: InsertWebhook :exec
INSERT INTO webhooks (id, team_id, url, event_types, enabled, secret_enc, created_at, updated_at)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(url), sqlc.arg(event_types), sqlc.arg(enabled),
        sqlc.arg(secret_enc), sqlc.arg(created_at), sqlc.arg(updated_at));

-- name: GetWebhook :one
SELECT * FROM webhooks WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: GetWebhookUnscoped :one
SELECT * FROM webhooks WHERE id = sqlc.arg(id);

-- name: ListWebhooks :many
SELECT * FROM webhooks WHERE team_id = sqlc.arg(team_id) ORDER BY id;

-- name: ListEnabledWebhooks :many
SELECT * FROM webhooks WHERE team_id = sqlc.arg(team_id) AND enabled ORDER BY id;

-- name: UpdateWebhook :execrows
UPDATE webhooks SET url = sqlc.arg(url), event_types = sqlc.arg(event_types), enabled = sqlc.arg(enabled),
    updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: SetWebhookSecret :execrows
UPDATE webhooks SET secret_enc = sqlc.arg(secret_enc), updated_at = sqlc.arg(updated_at)
WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: DeleteWebhook :execrows
DELETE FROM webhooks WHERE team_id = sqlc.arg(team_id) AND id = sqlc.arg(id);

-- name: InsertWebhookDelivery :one
INSERT INTO webhook_deliveries (webhook_id, team_id, event_id, event_type, body, status, next_attempt_at, created_at)
VALUES (sqlc.arg(webhook_id), sqlc.arg(team_id), sqlc.arg(event_id), sqlc.arg(event_type), sqlc.arg(body),
        'pending', sqlc.arg(next_attempt_at), sqlc.arg(created_at))
RETURNING id;

-- name: ListWebhookDeliveries :many
SELECT * FROM webhook_deliveries
WHERE team_id = sqlc.arg(team_id) AND webhook_id = sqlc.arg(webhook_id) AND id < sqlc.arg(before_id)
ORDER BY id DESC
LIMIT sqlc.arg(lim);

-- name: DueWebhooks :many
SELECT DISTINCT webhook_id FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at <= sqlc.arg(now)
LIMIT sqlc.arg(lim);

-- name: LeaseWebhook :execrows
UPDATE webhooks SET lease_owner = sqlc.arg(owner), lease_until = sqlc.arg(until)
WHERE id = sqlc.arg(id) AND (lease_until < sqlc.arg(now) OR lease_owner = sqlc.arg(owner));

-- name: ReleaseWebhook :exec
UPDATE webhooks SET lease_owner = '', lease_until = sqlc.arg(zero)
WHERE id = sqlc.arg(id) AND lease_owner = sqlc.arg(owner);

-- name: PendingWebhookDeliveries :many
SELECT * FROM webhook_deliveries
WHERE webhook_id = sqlc.arg(webhook_id) AND status = 'pending'
ORDER BY id
LIMIT sqlc.arg(lim);

-- name: FinishWebhookDelivery :execrows
UPDATE webhook_deliveries SET status = sqlc.arg(status), attempts = attempts + 1,
    next_attempt_at = sqlc.arg(next_attempt_at), last_attempt_at = sqlc.arg(attempted_at),
    response_status = sqlc.arg(response_status), last_error = sqlc.arg(last_error)
WHERE webhook_deliveries.id = sqlc.arg(id) AND webhook_deliveries.status = 'pending'
  AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = webhook_deliveries.webhook_id AND w.lease_owner = sqlc.arg(owner));
