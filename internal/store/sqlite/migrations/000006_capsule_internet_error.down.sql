ALTER TABLE capsules DROP COLUMN error_reason;
ALTER TABLE capsules DROP COLUMN allow_internet;
