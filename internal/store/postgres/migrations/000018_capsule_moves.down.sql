ALTER TABLE hosts DROP COLUMN drain_report;
ALTER TABLE hosts DROP COLUMN drain;
ALTER TABLE capsules DROP COLUMN move_record;
