-- allow_internet: whether the capsule may open outbound connections to
-- public addresses (the host, other capsules and private ranges stay
-- unreachable either way). Existing capsules were created without it.
ALTER TABLE capsules ADD COLUMN allow_internet BOOLEAN NOT NULL DEFAULT FALSE;
-- error_reason: why a capsule is in status error; empty otherwise.
ALTER TABLE capsules ADD COLUMN error_reason TEXT NOT NULL DEFAULT '';
