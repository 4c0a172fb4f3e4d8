ALTER TABLE teams DROP COLUMN allowed_private_ranges;
ALTER TABLE templates DROP COLUMN capsule_internet;
