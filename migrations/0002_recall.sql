-- Recall: the full-text column drops the leading "user" of slot words (every slotted memory had
-- it, which made it useless for ranking and costly to match), and an index serves exact vector
-- search and BM25 statistics over one user's scope.

ALTER TABLE memories DROP COLUMN tsv;
ALTER TABLE memories ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    to_tsvector('english', content || ' ' || coalesce(subject, '') || ' '
                           || regexp_replace(translate(coalesce(slot, ''), '._', '  '), '^user\s+', ''))
) STORED;
CREATE INDEX memories_tsv ON memories USING gin (tsv);

-- Scope lookups that do not care about order (stats, exact vector search).
CREATE INDEX memories_scope ON memories (tenant_id, user_id, namespace) INCLUDE (status, embedding_model);
