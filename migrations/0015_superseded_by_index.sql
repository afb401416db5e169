-- Deleting a memory (a purge, the retention job) makes Postgres clear `superseded_by` wherever
-- it points at the deleted row (ON DELETE SET NULL). Without an index on that column each deleted
-- row cost a scan of every memory: purging a user with 100,000 memories ran for more than a
-- quarter of an hour. Only superseded memories have the column set, so the index is small.
CREATE INDEX memories_superseded_by ON memories (superseded_by) WHERE superseded_by IS NOT NULL;
