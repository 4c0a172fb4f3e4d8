-- events: the per-team life-cycle log (internal/events). id orders the log
-- and is the SSE event id and the keyset cursor. team_id has no foreign
-- key: like audit_logs, events are pruned by age (--event-retention).
CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id    TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    data       BYTEA   NOT NULL
);
CREATE INDEX events_team_idx ON events (team_id, id);
CREATE INDEX events_time_idx ON events (created_at);

-- webhooks: a team's endpoints (internal/webhooks). secret_enc is the
-- signing secret sealed with a key derived from the server secret;
-- event_types is a JSON array (empty: every type). lease_owner and
-- lease_until say which replica delivers to the endpoint now.
CREATE TABLE webhooks (
    id          TEXT    PRIMARY KEY,
    team_id     TEXT    NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    url         TEXT    NOT NULL,
    event_types BYTEA   NOT NULL,
    enabled     BOOLEAN NOT NULL,
    secret_enc  BYTEA   NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    lease_owner TEXT    NOT NULL DEFAULT '',
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01T00:00:00Z'
);
CREATE INDEX webhooks_team_idx ON webhooks (team_id, id);

-- webhook_deliveries: the outbox. One row per (endpoint, event), written
-- in the same transaction as the event; body is the exact JSON sent.
CREATE TABLE webhook_deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    team_id         TEXT    NOT NULL,
    event_id        BIGINT NOT NULL,
    event_type      TEXT    NOT NULL,
    body            BYTEA   NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_attempt_at TIMESTAMPTZ,
    response_status BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook_idx ON webhook_deliveries (webhook_id, id);
