DROP TABLE build_logs;
