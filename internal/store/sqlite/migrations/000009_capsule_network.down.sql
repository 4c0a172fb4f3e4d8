ALTER TABLE teams DROP COLUMN capsule_internet;
ALTER TABLE capsules DROP COLUMN network;
