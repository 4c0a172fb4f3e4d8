-- metadata: string key/values given at create (the E2B-compatible API's
-- sandbox metadata), returned in get and list and filterable.
ALTER TABLE capsules ADD COLUMN metadata BLOB NOT NULL DEFAULT '{}';
