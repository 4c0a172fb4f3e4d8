-- build_logs: a template build's log records (internal/builds): step
-- boundaries and each step's stdout/stderr, in order (seq). The runner
-- keeps about the last 10 MiB of data per build by deleting the oldest
-- records; rows go with their build.
CREATE TABLE build_logs (
    build_id   TEXT    NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq        BIGINT  NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    step       BIGINT  NOT NULL,
    stream     TEXT    NOT NULL,
    data       BYTEA   NOT NULL,
    PRIMARY KEY (build_id, seq)
);
