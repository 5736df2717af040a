-- Who advances each named reader (a webhook endpoint's delivery), so each
-- event is delivered by one replica; and the fence each cursor was saved
-- under, so a replica paused past its claim cannot move a cursor back.
CREATE TABLE tokend_reader_claims (
    name          text COLLATE "C" PRIMARY KEY,
    holder        text NOT NULL,
    fence         bigint NOT NULL CHECK (fence > 0),
    expires_at_ms bigint NOT NULL
);

ALTER TABLE tokend_cursors ADD COLUMN fence bigint NOT NULL DEFAULT 0;
