-- templates.capsule_internet: the template's default for a capsule's
-- allow_internet when the create does not say (NULL: the team's default).
-- teams.allowed_private_ranges: private CIDRs (RFC 1918, CGNAT, ULA) the
-- team's capsules may reach, set by a platform admin for BYOC teams; a
-- JSON array of strings (NULL: none).
ALTER TABLE templates ADD COLUMN capsule_internet BOOLEAN;
ALTER TABLE teams ADD COLUMN allowed_private_ranges TEXT;
