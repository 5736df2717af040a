-- Which binding the records' sealed fields use (tokend_store's codec
-- schema): 1 until a replica that binds each secret to its record's
-- provider, account, params and metadata has re-sealed every record (at
-- connect, under the migration lock), 2 after. Once 2, a record sealed the
-- old way is unreadable.
CREATE TABLE tokend_sealing (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    binding  integer NOT NULL
);
INSERT INTO tokend_sealing (binding) VALUES (1);
