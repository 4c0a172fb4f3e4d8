DROP TABLE IF EXISTS daily_usage;
DROP TABLE IF EXISTS capsule_metric_snapshots;
DROP TABLE IF EXISTS audit_logs;
