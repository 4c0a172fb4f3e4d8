-- network: a capsule's egress policy and rate limits (allow_out, deny_out,
-- egress_mbps, ingress_mbps, burst_mb as JSON; empty/NULL = the defaults).
-- capsule_internet: a team's default for allow_internet (NULL = on).
ALTER TABLE capsules ADD COLUMN network BLOB;
ALTER TABLE teams ADD COLUMN capsule_internet BOOLEAN;
