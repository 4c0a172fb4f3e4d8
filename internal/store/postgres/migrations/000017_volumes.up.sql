-- volumes: a team's persistent volumes (docs/VOLUMES.md). name is unique
-- per team; size_mb is the quota (the size of the volume's ext4 image).
-- The content lives in the snapshot store under header snapshot_name
-- (written by the agent that last held the volume read-write, the header
-- write being the commit point) or on the host of a capsule that mounts
-- it. version counts the generations the control plane has seen written.
CREATE TABLE volumes (
    id            TEXT    PRIMARY KEY,
    team_id       TEXT    NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    size_mb       BIGINT NOT NULL CHECK (size_mb > 0),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0,
    snapshot_name TEXT    NOT NULL,
    UNIQUE (team_id, name)
);

-- volume_mounts: which capsule mounts which volume where. A mount holds
-- its volume while its capsule is not stopped; at most one such mount is
-- read-write (checked under a lock of the volume row when mounts are
-- added).
CREATE TABLE volume_mounts (
    capsule_id TEXT    NOT NULL REFERENCES capsules (id) ON DELETE CASCADE,
    volume_id  TEXT    NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    path       TEXT    NOT NULL,
    read_only  BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (capsule_id, path)
);
CREATE INDEX volume_mounts_volume_idx ON volume_mounts (volume_id);
