DROP TABLE volume_mounts;
DROP TABLE volumes;
