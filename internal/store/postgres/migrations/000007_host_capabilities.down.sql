ALTER TABLE hosts DROP COLUMN capabilities;
ALTER TABLE hosts DROP COLUMN disk_overcommit;
ALTER TABLE hosts DROP COLUMN memory_overcommit;
ALTER TABLE hosts DROP COLUMN cpu_overcommit;
