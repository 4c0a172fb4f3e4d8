ALTER TABLE templates DROP COLUMN host_id;
