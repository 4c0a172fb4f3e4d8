-- leases: named background jobs (reconciler, usage rollups, metrics
-- flush) that run on one control-plane replica at a time. A replica holds
-- a lease while it renews it before expires_at; another takes it over
-- once it has expired (internal/lease). renewed_at is the holder's clock
-- at its last renewal.
CREATE TABLE leases (
    name       TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
