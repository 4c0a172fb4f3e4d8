-- Audit log and usage metering. team_id has no foreign key here: audit
-- entries and usage outlive the teams they describe.
CREATE TABLE audit_logs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id       TEXT NOT NULL,
    actor_type    TEXT NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system', 'host')),
    actor_id      TEXT NOT NULL,
    actor_name    TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('success', 'failure')),
    scope         TEXT NOT NULL CHECK (scope IN ('team', 'admin')),
    metadata      BLOB NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL
);
-- Keyset pagination walks (created_at, id) descending within a team/scope.
CREATE INDEX audit_logs_team_idx ON audit_logs (team_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_scope_idx ON audit_logs (scope, created_at DESC, id DESC);
CREATE INDEX audit_logs_time_idx ON audit_logs (created_at DESC, id DESC);
CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_id);

CREATE TABLE capsule_metric_snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    capsule_id  TEXT NOT NULL,
    team_id     TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    interval_ms INTEGER NOT NULL,
    cpu_cores   REAL NOT NULL,
    mem_bytes   INTEGER NOT NULL
);
CREATE INDEX capsule_metric_snapshots_team_idx ON capsule_metric_snapshots (team_id, ts);
CREATE INDEX capsule_metric_snapshots_capsule_idx ON capsule_metric_snapshots (capsule_id, ts);

CREATE TABLE daily_usage (
    team_id        TEXT NOT NULL,
    day            TEXT NOT NULL,
    cpu_minutes    REAL NOT NULL,
    ram_mb_minutes REAL NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (team_id, day)
);
