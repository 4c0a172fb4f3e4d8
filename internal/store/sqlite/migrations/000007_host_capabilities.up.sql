-- What a host reports beyond its capacity (issue 12): the overcommit
-- ratios its agent was started with (0 = not reported: the control plane's
-- defaults apply) and its capabilities (runtimes, isolation, memory
-- snapshots and why they are off, agent start time) as a JSON object.
ALTER TABLE hosts ADD COLUMN cpu_overcommit REAL NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN memory_overcommit REAL NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN disk_overcommit REAL NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN capabilities TEXT NOT NULL DEFAULT '{}';
