-- Delete what references the platform team before the team itself.
DELETE FROM capsules WHERE team_id = 'team-platform';
DELETE FROM builds WHERE team_id = 'team-platform';
DELETE FROM templates WHERE team_id = 'team-platform';
DELETE FROM host_tokens WHERE team_id = 'team-platform';
DELETE FROM hosts WHERE team_id = 'team-platform';
DELETE FROM api_keys WHERE team_id = 'team-platform';
DELETE FROM team_invites WHERE team_id = 'team-platform';
DELETE FROM team_members WHERE team_id = 'team-platform';
DELETE FROM teams WHERE id = 'team-platform';
