ALTER TABLE capsules DROP COLUMN metadata;
