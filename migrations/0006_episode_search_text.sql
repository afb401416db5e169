-- Who said it and when are part of what an episode is searched by: its full-text vector is now
-- written by Ingest from `core::embed::episode_text` — `[8 May 2023] Caroline: <content>` — and the
-- episode's embedding is computed from the same text. Episodes stored before this migration get
-- the same text rendered here (to_char matches the Rust format: day without padding, month name,
-- year, in UTC), and their BM25 postings are rebuilt. Their vectors keep the old text until the
-- re-embed job or a new model replaces them.

ALTER TABLE episodes ALTER COLUMN tsv DROP EXPRESSION;

UPDATE episodes SET tsv = to_tsvector('english',
    '[' || to_char(occurred_at AT TIME ZONE 'UTC', 'FMDD FMMonth YYYY') || '] '
    || coalesce(nullif(btrim(name), '') || ': ', '') || content);

DELETE FROM episode_terms;
INSERT INTO episode_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl)
SELECT e.tenant_id, e.user_id, e.namespace, u.lexeme, e.id,
       coalesce(array_length(u.positions, 1), 1), length(e.tsv)
FROM episodes e, unnest(e.tsv) u;

-- A row inserted without a search vector (by hand, or by a future import) gets the same text.
CREATE FUNCTION memoire_episode_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tsv IS NULL THEN
        NEW.tsv := to_tsvector('english',
            '[' || to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'FMDD FMMonth YYYY') || '] '
            || coalesce(nullif(btrim(NEW.name), '') || ': ', '') || NEW.content);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER episodes_tsv BEFORE INSERT ON episodes
    FOR EACH ROW EXECUTE FUNCTION memoire_episode_tsv();
