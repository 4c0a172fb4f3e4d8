-- The platform team owns public templates and records admin-panel actions.
INSERT INTO teams (id, name, is_byoc, is_platform, created_at, updated_at)
VALUES ('team-platform', 'Platform', FALSE, TRUE, now(), now());

INSERT INTO templates (id, team_id, name, public, size_bytes, created_at, updated_at)
VALUES ('tpl-base', 'team-platform', 'base', TRUE, 0, now(), now()),
       ('tpl-minimal', 'team-platform', 'minimal', TRUE, 0, now(), now());
