ALTER TABLE teams DROP COLUMN default_isolation;
ALTER TABLE templates DROP COLUMN isolation;
ALTER TABLE capsules DROP COLUMN isolation;
