-- Capsule life cycle (docs/LIFECYCLE.md).
-- capsules.on_timeout: what the end of the timeout does, 'kill' (destroy)
-- or 'pause' (pause to disk, with memory where the host can keep it).
-- capsules.auto_resume: any use of the paused capsule resumes it.
-- capsules.pause_reason: why a paused capsule is paused: 'timeout' (its
-- on_timeout; retention deletes it after --paused-retention), 'user' (an
-- explicit pause) or 'shutdown' (wrenn up stopping); '' when not paused.
-- templates/teams.on_timeout, auto_resume: defaults for capsules created
-- from the template / in the team (NULL: not set; precedence capsule,
-- template, team, then kill/false).
ALTER TABLE capsules ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'kill';
ALTER TABLE capsules ADD COLUMN auto_resume BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE capsules ADD COLUMN pause_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE templates ADD COLUMN on_timeout TEXT;
ALTER TABLE templates ADD COLUMN auto_resume BOOLEAN;
ALTER TABLE teams ADD COLUMN on_timeout TEXT;
ALTER TABLE teams ADD COLUMN auto_resume BOOLEAN;
