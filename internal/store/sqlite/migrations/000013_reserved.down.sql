-- Placeholder for migration 13 (the isolation branch's); the lead drops
-- this file when that branch is merged.
SELECT 1;
