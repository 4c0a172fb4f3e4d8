-- Placeholder for migration 17 (the volumes branch's); the lead drops
-- this file when that branch is merged.
SELECT 1;
