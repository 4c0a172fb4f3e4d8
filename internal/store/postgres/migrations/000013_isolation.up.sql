-- Isolation selection (docs/API.md "Isolation"):
-- capsules.isolation: how the capsule is isolated (container, gvisor,
-- microvm), chosen at create and kept for its life (resume and restore use
-- it); rows from before this migration ran as containers.
-- templates.isolation: the template's default when the create does not say
-- (NULL: the team's default).
-- teams.default_isolation: the team's default when neither the create nor
-- the template says (NULL: the platform's --default-isolation).
ALTER TABLE capsules ADD COLUMN isolation TEXT NOT NULL DEFAULT 'container';
ALTER TABLE templates ADD COLUMN isolation TEXT;
ALTER TABLE teams ADD COLUMN default_isolation TEXT;
