-- Who said it and when are part of what an episode is searched by: `[8 May 2023] Caroline:
-- <content>`. Its full-text vector comes from `memoire_episode_text` below, filled in by a trigger
-- on every insert; its embedding is computed from the same text by `core::embed::episode_text`
-- (the store's tests check that the two agree: to_char's day without padding, month name and
-- year, in UTC, are chrono's "%-d %B %Y"). Episodes stored before this migration get the same
-- text and their BM25 postings are rebuilt; their vectors keep the old text until the re-embed job
-- or a new model replaces them.

CREATE FUNCTION memoire_episode_text(name text, occurred_at timestamptz, content text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '[' || to_char(occurred_at AT TIME ZONE 'UTC', 'FMDD FMMonth YYYY') || '] '
        || coalesce(nullif(btrim(name), '') || ': ', '') || content
$$;

ALTER TABLE episodes ALTER COLUMN tsv DROP EXPRESSION;

UPDATE episodes SET tsv = to_tsvector('english', memoire_episode_text(name, occurred_at, content));

DELETE FROM episode_terms;
INSERT INTO episode_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl)
SELECT e.tenant_id, e.user_id, e.namespace, u.lexeme, e.id,
       coalesce(array_length(u.positions, 1), 1), length(e.tsv)
FROM episodes e, unnest(e.tsv) u;

-- Before the postings trigger (AFTER INSERT) reads it.
CREATE FUNCTION memoire_episode_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.tsv := to_tsvector('english', memoire_episode_text(NEW.name, NEW.occurred_at, NEW.content));
    RETURN NEW;
END;
$$;
CREATE TRIGGER episodes_tsv BEFORE INSERT ON episodes
    FOR EACH ROW EXECUTE FUNCTION memoire_episode_tsv();
