ALTER TABLE teams DROP COLUMN auto_resume;
ALTER TABLE teams DROP COLUMN on_timeout;
ALTER TABLE templates DROP COLUMN auto_resume;
ALTER TABLE templates DROP COLUMN on_timeout;
ALTER TABLE capsules DROP COLUMN pause_reason;
ALTER TABLE capsules DROP COLUMN auto_resume;
ALTER TABLE capsules DROP COLUMN on_timeout;
