ALTER TABLE templates DROP COLUMN source_capsule_id;
ALTER TABLE templates DROP COLUMN memory;
ALTER TABLE templates DROP COLUMN checksum;
