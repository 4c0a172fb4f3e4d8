-- Hosts, templates, builds, capsules.
CREATE TABLE hosts (
    id                TEXT PRIMARY KEY,
    team_id           TEXT REFERENCES teams (id) ON DELETE CASCADE,
    address           TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('online', 'unavailable', 'draining')),
    credential_hash   TEXT NOT NULL UNIQUE,
    vcpus             BIGINT NOT NULL,
    memory_mb         BIGINT NOT NULL,
    disk_mb           BIGINT NOT NULL,
    used_vcpus        BIGINT NOT NULL DEFAULT 0,
    used_memory_mb    BIGINT NOT NULL DEFAULT 0,
    used_disk_mb      BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_at TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX hosts_status_idx ON hosts (status, last_heartbeat_at);

CREATE TABLE host_tokens (
    token_hash TEXT PRIMARY KEY,
    team_id    TEXT REFERENCES teams (id) ON DELETE CASCADE,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    host_id    TEXT
);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    public     BOOLEAN NOT NULL DEFAULT FALSE,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (team_id, name)
);
CREATE INDEX templates_public_idx ON templates (name) WHERE public;

CREATE TABLE builds (
    id            TEXT PRIMARY KEY,
    team_id       TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    template_name TEXT NOT NULL,
    template_id   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    spec          JSONB NOT NULL DEFAULT '{}',
    error         TEXT NOT NULL DEFAULT '',
    created_by    TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX builds_team_idx ON builds (team_id, created_at DESC);

-- template_id has no foreign key: a paused capsule keeps its template id
-- even after the template is deleted.
CREATE TABLE capsules (
    id                TEXT PRIMARY KEY,
    team_id           TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    template_id       TEXT NOT NULL,
    host_id           TEXT REFERENCES hosts (id) ON DELETE SET NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'starting', 'running', 'paused', 'hibernated', 'stopped', 'error', 'missing')),
    vcpus             BIGINT NOT NULL,
    memory_mb         BIGINT NOT NULL,
    disk_size_mb      BIGINT NOT NULL,
    timeout_sec       BIGINT NOT NULL,
    expires_at        TIMESTAMPTZ,
    env               JSONB NOT NULL DEFAULT '{}',
    public            BOOLEAN NOT NULL DEFAULT FALSE,
    access_token_hash TEXT NOT NULL,
    created_by        TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    paused_at         TIMESTAMPTZ
);
CREATE INDEX capsules_team_idx ON capsules (team_id, created_at DESC, id DESC);
CREATE INDEX capsules_host_idx ON capsules (host_id);
CREATE INDEX capsules_expires_idx ON capsules (expires_at) WHERE expires_at IS NOT NULL;
