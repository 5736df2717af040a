-- Connection records and refresh leases.
--
-- Ids and providers sort bytewise (COLLATE "C"), as in the sled store, so
-- list pages come in the same order on every backend.
CREATE TABLE tokend_connections (
    id          text COLLATE "C" PRIMARY KEY,
    provider    text COLLATE "C" NOT NULL,
    status      text NOT NULL,
    incarnation bigint NOT NULL,
    revision    bigint NOT NULL,
    -- The record as tokend encodes it: token fields sealed with tokend's
    -- own keys (XChaCha20-Poly1305) before they leave the process.
    sealed      bytea NOT NULL
);
CREATE INDEX tokend_connections_by_provider ON tokend_connections (provider, id);

-- The last refresh lease granted per connection. `fence` only grows, and
-- the row outlives the connection's record, so a fence is never reused.
CREATE TABLE tokend_leases (
    id            text COLLATE "C" PRIMARY KEY,
    holder        text NOT NULL,
    fence         bigint NOT NULL CHECK (fence > 0),
    expires_at_ms bigint NOT NULL,
    released      boolean NOT NULL,
    in_doubt      boolean NOT NULL
);
