-- Templates in the shared template store (docs/TEMPLATES.md): checksum is
-- the SHA-256 of the template's archive there ("<rootfs>+<memory>" when it
-- keeps memory); any host fetches the template by it, so capsules of a
-- template with a checksum are not pinned to host_id (the host that made
-- it). NULL: the template is on every host (seeded) or only on host_id.
-- memory: the template keeps its processes' memory (capsules from it start
-- with them running, where the host can restore them).
-- source_capsule_id: the capsule the template was snapshotted from (the
-- E2B-compatible API lists these as snapshots); no foreign key, the
-- capsule row may go.
ALTER TABLE templates ADD COLUMN checksum TEXT;
ALTER TABLE templates ADD COLUMN source_capsule_id TEXT;
ALTER TABLE templates ADD COLUMN memory BOOLEAN NOT NULL DEFAULT FALSE;
