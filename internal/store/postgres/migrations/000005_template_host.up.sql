-- A template built on a host (admin template builds) exists only in that
-- host's template store: capsules of it must be placed there. NULL for
-- templates every host has (the seeded public ones).
ALTER TABLE templates ADD COLUMN host_id TEXT REFERENCES hosts (id) ON DELETE SET NULL;
