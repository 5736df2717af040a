-- The keys the records are sealed with: per key id, a check value (a
-- constant sealed under that key alone, never the key). A replica whose
-- keys lack one that records use refuses to start, instead of sealing new
-- installs with a key only it has (tokend_store::key_records). Filled at
-- the first connect after this migration from the records themselves.
CREATE TABLE tokend_keys (
    key_id      bigint PRIMARY KEY CHECK (key_id >= 0),
    check_value text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
