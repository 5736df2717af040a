-- Listing connections by status (e.g. every RECONNECT_REQUIRED one) walks
-- an index instead of the whole table; ids within a status in id order, as
-- pages are read.
CREATE INDEX tokend_connections_by_status ON tokend_connections (status, id);
