-- Recall's access statistics (when a memory was last returned, how often) live in a narrow table
-- of their own. Written into `memories`, every recall rewrote each returned row — its embedding
-- included — and, as those rows fill their pages, added entries to every index of the table,
-- the HNSW index too. Here a recall upserts rows of three columns whose only index is the key,
-- and the free space left on each page lets those updates stay heap-only.
--
-- A memory's statistics are its columns in `memories` (what was recorded before this migration)
-- combined with its row here: the later time, the sum of the counts.
CREATE TABLE memory_access (
    memory_id        uuid PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    last_accessed_at timestamptz NOT NULL,
    hits             bigint NOT NULL
) WITH (fillfactor = 50);
