-- Capsule moves between hosts and host drains (docs/FLEET.md, "Moving
-- capsules").
-- capsules.move_record: the export record the capsule's host returned at
-- its last pause to disk (opaque to the control plane); another host
-- adopts the capsule from it. '' when the capsule cannot move (its host's
-- snapshot store is local, or it was never paused to disk).
-- hosts.drain: '' (schedulable), 'draining' (no new placements; its
-- capsules are being moved off) or 'drained' (nothing left to move).
-- hosts.drain_report: the drain's progress, JSON (internal/capsules).
ALTER TABLE capsules ADD COLUMN move_record TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN drain TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN drain_report TEXT NOT NULL DEFAULT '';
