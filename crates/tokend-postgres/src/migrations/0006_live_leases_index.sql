-- The sweep of expired refresh leases (every replica, every few seconds)
-- reads only the leases not released, a handful at any time, instead of
-- the row every connection ever refreshed keeps.
CREATE INDEX tokend_leases_unreleased ON tokend_leases (expires_at_ms) WHERE NOT released;
