-- The event log: every record change appends its events in the same
-- transaction. `last_seq` is bumped under its row lock, so sequence numbers
-- are contiguous and in commit order across every replica.
CREATE TABLE tokend_log (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Identifies this log: cursors from another log are refused.
    log_id    bigint NOT NULL CHECK (log_id <> 0),
    last_seq  bigint NOT NULL
);
INSERT INTO tokend_log (log_id, last_seq)
VALUES ((floor(random() * 9007199254740990) + 1)::bigint, 0);

CREATE TABLE tokend_events (
    seq   bigint PRIMARY KEY,
    at_ms bigint NOT NULL,
    -- The event as JSON (connection metadata, never a secret).
    body  text NOT NULL
);

-- Named readers' saved positions (webhook endpoints).
CREATE TABLE tokend_cursors (
    name text COLLATE "C" PRIMARY KEY,
    body text NOT NULL
);
